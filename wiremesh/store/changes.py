"""The store's revision: every write that can change a netmap bumps it in the same
transaction, and replicas learn of it (PostgreSQL NOTIFY, or by polling the revision)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession

from wiremesh.store.common import counter
from wiremesh.store.database import Database
from wiremesh.store.tables import Meta

CHANGES_CHANNEL = "wiremesh_changes"


async def bump(s: AsyncSession) -> int:
    """Give the transaction's change the next revision."""
    # One statement, so no two changes can ever get the same revision (a hub that holds
    # a revision never loads a second change committed under it).
    rev = await s.scalar(
        update(Meta).where(Meta.key == "revision").values(value=Meta.value + 1)
        .returning(Meta.value).execution_options(synchronize_session=False))
    if rev is None:
        raise RuntimeError("the store has no revision counter: was it bootstrapped?")
    if s.get_bind().dialect.name == "postgresql":
        # Delivered at commit (never for a rolled-back change) to every replica's listen().
        await s.execute(text(f"NOTIFY {CHANGES_CHANNEL}"))
    return rev


class Changes:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def revision(self) -> int:
        async with self.db.reads() as s:
            return await counter(s, "revision")

    async def listen(self, on_change: Callable[[], None]) -> Callable[[], Awaitable[None]]:
        """Call `on_change` whenever any replica commits a change (PostgreSQL LISTEN); returns
        the coroutine function that stops listening. On SQLite, replicas share a file on one
        machine and the hub's revision poll is all there is, so this does nothing."""
        if not self.db.postgres:
            async def nothing() -> None:
                return None

            return nothing
        conn = await self.db.engine.connect()
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None  # asyncpg's connection, open until stop()
        callback = lambda *_args: on_change()  # noqa: E731 - asyncpg passes 4 arguments
        await raw.add_listener(CHANGES_CHANNEL, callback)

        async def stop() -> None:
            try:
                await raw.remove_listener(CHANGES_CHANNEL, callback)
            finally:
                await conn.close()

        return stop
