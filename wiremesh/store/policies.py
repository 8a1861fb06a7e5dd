"""Policies, replaced all at once by applying a policy file (with its groups and routes)."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import delete, select

from wiremesh.core.models import Policy, PortRange, Route
from wiremesh.core.policy import ALL_GROUP
from wiremesh.core.posture import Posture
from wiremesh.store import audit, routes
from wiremesh.store.changes import bump
from wiremesh.store.common import counter
from wiremesh.store.database import Database
from wiremesh.store.errors import NotFound
from wiremesh.store.tables import Group, GroupMember, Peer, PolicyRow, RouteRow

_Named = TypeVar("_Named", Policy, Route)

# Peer names looked up per statement (SQLite caps the parameters of one).
MAX_NAMES = 500
DEFAULT_POLICY = Policy(name="default", sources=(ALL_GROUP,), destinations=(ALL_GROUP,),
                        description="all peers reach all peers")


def from_row(r: PolicyRow) -> Policy:
    return Policy(
        name=r.name, sources=tuple(r.sources), destinations=tuple(r.destinations),
        protocol=r.protocol,  # type: ignore[arg-type]
        ports=tuple(PortRange.parse(p) for p in r.ports), bidirectional=r.bidirectional,
        enabled=r.enabled, destination_routes=tuple(r.destination_routes),
        description=r.description,
        posture=None if r.posture is None else Posture(
            r.posture.get("min_agent_version"), tuple(r.posture.get("os", ()))),
    )


def row_values(p: Policy) -> dict[str, Any]:
    return dict(
        name=p.name, description=p.description, enabled=p.enabled, sources=list(p.sources),
        destinations=list(p.destinations), destination_routes=list(p.destination_routes),
        protocol=p.protocol, ports=[str(x) for x in p.ports], bidirectional=p.bidirectional,
        posture=None if p.posture is None else {
            "min_agent_version": p.posture.min_agent_version,
            "os": list(p.posture.os_families)},
    )


def _moved(was: dict[str, _Named], now: list[_Named]) -> list[str]:
    """The names added, edited or deleted from `was` to `now`."""
    by_name = {x.name: x for x in now}
    return [n for n in was.keys() | by_name.keys() if was.get(n) != by_name.get(n)]


class Policies:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def all(self) -> list[Policy]:
        async with self.db.reads() as s:
            return [from_row(r) for r in await s.scalars(select(PolicyRow).order_by(
                PolicyRow.name))]

    async def replace(
        self, actor: str, groups: dict[str, list[str]], policies: list[Policy] | None,
        new_routes: list[Route] | None, source: str,
    ) -> int:
        """Set the listed groups' members and replace every policy and every route, each
        when given (None: they stay as they are), in one transaction; groups not listed keep
        their members."""
        async with self.db.tx() as s:
            # Only the peers the file names, as plain rows: not every peer as an object.
            named = sorted({m for members in groups.values() for m in members})
            peers: dict[str, int] = {}
            for at in range(0, len(named), MAX_NAMES):
                peers.update((name, pid) for name, pid in await s.execute(
                    select(Peer.name, Peer.id).where(Peer.name.in_(named[at:at + MAX_NAMES]))))
            existing = {g.name: g for g in await s.scalars(
                select(Group).where(Group.name.in_(list(groups))))}
            for name, members in groups.items():
                grp = existing.get(name)
                if grp is None:
                    grp = Group(name=name)
                    s.add(grp)
                    await s.flush()
                await s.execute(delete(GroupMember).where(GroupMember.group_id == grp.id))
                for m in sorted(set(members)):
                    if m not in peers:
                        raise NotFound(f"no peer named {m!r}", f"groups.{name}")
                    s.add(GroupMember(group_id=grp.id, peer_id=peers[m]))
            # Hubs read only the policies and routes that changed: log their names.
            moved: list[str] = []
            if policies is not None:
                moved = _moved({p.name: p for p in map(from_row, await s.scalars(
                    select(PolicyRow)))}, policies)
                await s.execute(delete(PolicyRow))
                s.add_all(PolicyRow(**row_values(p)) for p in policies)
            moved_routes: list[str] = []
            if new_routes is not None:
                moved_routes = _moved({r.name: r for r in map(routes.from_row, await s.scalars(
                    select(RouteRow)))}, new_routes)
                await s.execute(delete(RouteRow))
                s.add_all(RouteRow(**routes.row_values(r)) for r in new_routes)
            if groups or moved or moved_routes:
                rev = await bump(s, groups=groups, policies=moved, routes=moved_routes)
            else:
                rev = await counter(s, "revision")  # the same file again: nothing changed
            audit.record(s, actor, "policy.apply", source=source,
                         policies=None if policies is None else [p.name for p in policies],
                         groups=sorted(groups))
            return rev
