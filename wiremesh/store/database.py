"""The one transaction helper every repository goes through."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from wiremesh.store.db import is_postgres, lock_writers, snapshot_reads


class Database:
    """`tx()`: a write transaction, the only writer while it lasts; `reads()`: a session
    whose transactions are consistent read-only snapshots."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.postgres = is_postgres(engine)
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.reads = async_sessionmaker(snapshot_reads(engine), expire_on_commit=False)
        # SQLite has one writer at a time and its busy handler is a sleep-and-retry loop
        # that lets an unlucky writer starve; queueing our writers in a fair FIFO lock keeps
        # busy waits for the rare writer from another process.
        self._write_lock = None if self.postgres else asyncio.Lock()

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncSession]:
        async with contextlib.AsyncExitStack() as stack:
            if self._write_lock is not None:
                await stack.enter_async_context(self._write_lock)
            s = await stack.enter_async_context(self.sessions())
            await stack.enter_async_context(s.begin())
            await lock_writers(await s.connection())
            yield s
