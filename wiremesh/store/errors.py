"""What the store refuses, and why: domain errors, no transport. The server maps each kind
to an HTTP status (server/errors.py)."""

from __future__ import annotations


class StoreError(Exception):
    """A request the store cannot carry out; `field` names the input at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Invalid(StoreError):
    """The input contradicts itself or the rules of the entity."""


class NotFound(StoreError):
    """The referenced entity does not exist."""


class Conflict(StoreError):
    """The change clashes with what the store holds (a name taken, a group in use)."""


class Refused(StoreError):
    """A credential (setup key) does not allow this."""
