"""Small values every repository shares: secrets, timestamps, ids and names."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from wiremesh.store.tables import Meta

MAX_ID = 2**31 - 1  # ids are 32-bit integer columns
MAX_NAME = 63  # the longest Name (core/wire.py)


def hash_secret(secret: str) -> str:
    # Secrets are 256-bit random tokens, so a plain SHA-256 (not a password KDF) is enough.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def same_secret(stored_hash: str, given_hash: str) -> bool:
    return secrets.compare_digest(stored_hash, given_hash)


def now() -> datetime:
    return datetime.now(UTC)


def aware(dt: datetime | None) -> datetime | None:
    # SQLite hands datetimes back naive; they were stored as UTC.
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def as_id(ref: str | int) -> int | None:
    """The row id `ref` names, if it is one: ASCII digits within the column's range (a
    bigger number, or '²', would make the database or int() raise instead of not finding)."""
    if isinstance(ref, int):
        return ref if 0 < ref <= MAX_ID else None
    if not (ref.isascii() and ref.isdigit() and len(ref) <= len(str(MAX_ID))):
        return None
    return int(ref) if 0 < int(ref) <= MAX_ID else None


def unique_name(wanted: str, taken: set[str] | dict[str, Any]) -> str:
    """`wanted`, or `wanted-N` with the smallest free N (shortened to stay a valid name)."""
    if wanted not in taken:
        return wanted
    n = 2
    while True:
        suffix = f"-{n}"
        name = wanted[:MAX_NAME - len(suffix)] + suffix
        if name not in taken:
            return name
        n += 1


async def counter(s: AsyncSession, key: str) -> int:
    """A counter of the `meta` table (`revision`, `ipam_next`)."""
    v = await s.scalar(select(Meta.value).where(Meta.key == key))
    return int(v or 0)
