"""The store's revision and change log: every write that can change a netmap bumps the
revision and logs what it changed in the same transaction, so a hub reloads only that;
replicas learn of a change by PostgreSQL NOTIFY, or by polling the revision."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from sqlalchemy import delete, insert, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from wiremesh.store.common import counter
from wiremesh.store.database import Database
from wiremesh.store.tables import ChangeRow, Meta

CHANGES_CHANNEL = "wiremesh_changes"
# Revisions the log keeps: a hub further behind than that reloads the whole mesh.
KEEP = 10_000
TRIM_EVERY = 100

PEER, GROUP, POLICIES, ROUTES = "peer", "group", "policies", "routes"


async def bump(s: AsyncSession, peers: Iterable[int] = (), groups: Iterable[str] = (),
               policies: Iterable[str] = (), routes: Iterable[str] = ()) -> int:
    """Give the transaction's change the next revision, and log what it changed: peers
    (their rows or group memberships), groups (existence or members), policies and routes
    (by name: added, edited or deleted). A change must log something, or hubs take its
    revision for a gap."""
    # One statement, so no two changes can ever get the same revision (a hub that holds
    # a revision never loads a second change committed under it).
    rev = await s.scalar(
        update(Meta).where(Meta.key == "revision").values(value=Meta.value + 1)
        .returning(Meta.value).execution_options(synchronize_session=False))
    if rev is None:
        raise RuntimeError("the store has no revision counter: was it bootstrapped?")
    logged = [{"revision": rev, "kind": PEER, "ref": str(p)} for p in set(peers)]
    logged += [{"revision": rev, "kind": GROUP, "ref": g} for g in set(groups)]
    logged += [{"revision": rev, "kind": POLICIES, "ref": p} for p in set(policies)]
    logged += [{"revision": rev, "kind": ROUTES, "ref": r} for r in set(routes)]
    if not logged:
        raise ValueError("a change must say what it changed")
    await s.execute(insert(ChangeRow), logged)
    if rev % TRIM_EVERY == 0:
        await trim(s, rev - KEEP)
    if s.get_bind().dialect.name == "postgresql":
        # Delivered at commit (never for a rolled-back change) to every replica's listen().
        await s.execute(text(f"NOTIFY {CHANGES_CHANNEL}"))
    return rev


async def trim(s: AsyncSession, upto: int) -> None:
    """Forget the changes of revisions up to `upto`."""
    await s.execute(delete(ChangeRow).where(ChangeRow.revision <= upto))


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
