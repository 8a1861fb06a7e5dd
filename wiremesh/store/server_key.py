"""The server's netmap signing key: one row, shared by every replica of the database."""

from __future__ import annotations

import base64
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from wiremesh.store.common import now
from wiremesh.store.database import Database
from wiremesh.store.errors import StoreError
from wiremesh.store.tables import ServerKey


async def signing_key(db: Database, generate: Callable[[], bytes]) -> bytes:
    """The server's signing key (raw bytes), made with `generate` on first use. Replicas
    starting together may both generate one: the first insert wins, the other reads it."""
    for _ in range(2):
        async with db.reads() as s:
            row = await s.scalar(select(ServerKey).where(ServerKey.id == 1))
        if row is not None:
            return base64.b64decode(row.private_key)
        try:
            async with db.tx() as s:
                s.add(ServerKey(id=1, private_key=base64.b64encode(generate()).decode(),
                                created_at=now()))
        except IntegrityError:
            continue
    raise StoreError("could not read or create the server signing key")
