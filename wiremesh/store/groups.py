"""Groups of peers (besides the built-in `all`, which always holds every peer)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from wiremesh.core.policy import ALL_GROUP
from wiremesh.store import audit, lookup, setup_keys
from wiremesh.store.changes import bump
from wiremesh.store.database import Database
from wiremesh.store.errors import Conflict
from wiremesh.store.tables import Group, GroupMember, Peer, PolicyRow, RouteRow


async def policies_using(s: AsyncSession, uses: Callable[[PolicyRow], bool]) -> list[str]:
    return [p.name for p in await s.scalars(select(PolicyRow)) if uses(p)]


def refuse_in_use(what: str, users: dict[str, list[str]], field: str = "name") -> None:
    """Conflict naming, by kind, whatever still refers to `what`: a name left dangling would
    change meaning when the name is made again (a route re-created wider, a group re-created
    filling itself from a setup key), and an exported policy file could not be applied."""
    named = [f"{kind} {', '.join(sorted(names))}" for kind, names in users.items() if names]
    if named:
        raise Conflict(f"{what} is used by {'; '.join(named)}", field)


class Groups:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, actor: str, name: str, members: list[str]) -> Group:
        if name == ALL_GROUP:
            raise Conflict(f"{ALL_GROUP!r} is built in", "name")
        try:
            async with self.db.tx() as s:
                grp = Group(name=name)
                s.add(grp)
                await s.flush()
                # One row per peer, however often (by name or by id) the list names it.
                ids = {(await lookup.peer(s, m, field="members")).id for m in members}
                s.add_all(GroupMember(group_id=grp.id, peer_id=pid) for pid in sorted(ids))
                await bump(s, groups=[name])
                audit.record(s, actor, "group.create", name=name, members=members)
                return grp
        except IntegrityError:
            raise Conflict(f"group {name!r} already exists", "name") from None

    async def all(self, name: str | None = None) -> dict[str, list[str]]:
        """Members' names by group name (without `all`); only group `name` when given (the
        answer to a change of one group should not read the others' members: 550,000)."""
        async with self.db.reads() as s:
            groups = select(Group.name).order_by(Group.name)
            members = (select(Group.name, Peer.name)
                       .join(GroupMember, GroupMember.group_id == Group.id)
                       .join(Peer, Peer.id == GroupMember.peer_id)
                       .order_by(Peer.name))
            if name is not None:
                groups, members = groups.where(Group.name == name), members.where(
                    Group.name == name)
            out: dict[str, list[str]] = {g: [] for g in await s.scalars(groups)}
            for g, p in await s.execute(members):
                out[g].append(p)
            return out

    async def set_membership(self, actor: str, group: str, peer_ref: str, member: bool) -> bool:
        """Put the peer in the group or take it out; whether that changed anything."""
        async with self.db.tx() as s:
            grp = await lookup.group(s, group)
            peer = await lookup.peer(s, peer_ref)
            exists = await s.get(GroupMember, (grp.id, peer.id))
            if member and exists is None:
                s.add(GroupMember(group_id=grp.id, peer_id=peer.id))
            elif not member and exists is not None:
                # A per-router metric is for a router of its route (core/policyfile.py).
                refuse_in_use(f"router {peer.name!r} of group {group!r}", {
                    "the per-router metric of routes": [
                        r.name for r in await s.scalars(select(RouteRow).where(
                            RouteRow.router_group == group)) if peer.name in r.router_metrics]},
                    "peer")
                await s.delete(exists)
            else:
                return False
            await bump(s, peers=[peer.id])
            audit.record(s, actor, "group.add" if member else "group.remove",
                         group=group, peer=peer.name)
            return True

    async def delete(self, actor: str, name: str) -> None:
        async with self.db.tx() as s:
            grp = await lookup.group(s, name)
            refuse_in_use(f"group {name!r}", {
                "policies": await policies_using(
                    s, lambda p: name in p.sources or name in p.destinations),
                "routes": [r.name for r in await s.scalars(select(RouteRow).where(
                    RouteRow.router_group == name))],
                "setup keys": await setup_keys.naming_group(s, name),
            })
            await s.delete(grp)
            await bump(s, groups=[name])
            audit.record(s, actor, "group.delete", name=name)
