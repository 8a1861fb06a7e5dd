"""Small values every repository shares: secrets, timestamps, ids and names."""

from __future__ import annotations

import hashlib
import itertools
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from wiremesh.store.tables import Meta

MAX_ID = 2**31 - 1  # ids are 32-bit integer columns
MAX_REVISION = 2**63 - 1  # revisions are 64-bit integer columns
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


def name_candidates(wanted: str) -> Iterator[str]:
    """The names a peer asking for `wanted` may get, best first: `wanted`, then `wanted-N`
    for N = 2, 3, ... (shortened to stay a valid name)."""
    yield wanted
    for n in itertools.count(2):
        suffix = f"-{n}"
        yield wanted[:MAX_NAME - len(suffix)] + suffix


async def counter(s: AsyncSession, key: str) -> int:
    """A counter of the `meta` table (`revision`, `ipam_next`)."""
    v = await s.scalar(select(Meta.value).where(Meta.key == key))
    return int(v or 0)
