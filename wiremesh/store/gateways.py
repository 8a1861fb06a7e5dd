"""The known-peer feed of JIT gateways: who a gateway must know, paged, and what changed
since a revision (from the change log).

A gateway is a peer enrolled with a setup key of role `gateway`. It knows the members of the
groups that policies let reach it (core/gateway_feed.py), except other gateways; each known
peer comes as (peer id, public key, overlay address).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from wiremesh.core.gateway_feed import admitted_groups
from wiremesh.core.policy import ALL_GROUP
from wiremesh.store import policies
from wiremesh.store.changes import GROUP, PEER, POLICIES
from wiremesh.store.common import counter
from wiremesh.store.database import Database
from wiremesh.store.mesh import not_gateway
from wiremesh.store.roles import GATEWAY_ROLE
from wiremesh.store.tables import ChangeRow, Group, GroupMember, Peer, PolicyRow, SetupKey

KnownRow = tuple[int, str, str]  # peer id, public key, overlay address


@dataclass(frozen=True)
class KnownPage:
    revision: int  # the store's revision when this page was read
    peers: list[KnownRow]
    next_after: int | None  # ask again with after=this for the next page; None = done


@dataclass(frozen=True)
class KnownChanges:
    """What changed in a gateway's known set between two revisions. `reset`: the log cannot
    tell (trimmed, or policies / the gateway's own groups changed): sync again from page 1."""

    revision: int
    upsert: list[KnownRow]
    remove: list[int]  # peer ids
    reset: bool = False


class Gateways:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def is_gateway(self, peer: Peer) -> bool:
        if peer.setup_key_id is None:
            return False
        async with self.db.reads() as s:
            role = await s.scalar(select(SetupKey.role).where(SetupKey.id == peer.setup_key_id))
        return role == GATEWAY_ROLE

    async def known_page(self, gateway_id: int, after: int, limit: int) -> KnownPage:
        async with self.db.reads() as s, s.begin():
            rev = await counter(s, "revision")
            rows = [(r[0], r[1], r[2]) for r in await s.execute(
                (await _known(s, gateway_id)).where(Peer.id > after)
                .order_by(Peer.id).limit(limit))]
        return KnownPage(rev, rows, rows[-1][0] if len(rows) == limit else None)

    async def changes(self, gateway_id: int, since: int) -> KnownChanges:
        async with self.db.reads() as s, s.begin():
            rev = await counter(s, "revision")
            if rev == since:
                return KnownChanges(rev, [], [])
            logged = (await s.execute(select(ChangeRow.revision, ChangeRow.kind, ChangeRow.ref)
                                      .where(ChangeRow.revision > since))).all()
            peer_ids = {int(ref) for _, kind, ref in logged if kind == PEER}
            groups = {ref for _, kind, ref in logged if kind == GROUP}
            sources = await _sources(s, gateway_id)
            if (rev < since or {r[0] for r in logged} != set(range(since + 1, rev + 1))
                    or any(kind == POLICIES for _, kind, _ in logged)
                    or gateway_id in peer_ids
                    or groups & (sources | await _groups_of(s, gateway_id))):
                return KnownChanges(rev, [], [], reset=True)
            if not peer_ids:
                return KnownChanges(rev, [], [])
            rows = [(r[0], r[1], r[2]) for r in await s.execute(
                (await _known(s, gateway_id, sources)).where(Peer.id.in_(peer_ids)))]
        return KnownChanges(rev, rows, sorted(peer_ids - {r[0] for r in rows}))


async def _groups_of(s: AsyncSession, peer_id: int) -> set[str]:
    return set(await s.scalars(select(Group.name).join(
        GroupMember, GroupMember.group_id == Group.id).where(GroupMember.peer_id == peer_id)))


async def _sources(s: AsyncSession, gateway_id: int) -> frozenset[str]:
    pols = [policies.from_row(r) for r in await s.scalars(select(PolicyRow))]
    return admitted_groups(pols, await _groups_of(s, gateway_id))


async def _known(s: AsyncSession, gateway_id: int,
                 sources: frozenset[str] | None = None) -> Select[int, str, str]:
    """The query of a gateway's known peers (to be narrowed and ordered by the caller)."""
    if sources is None:
        sources = await _sources(s, gateway_id)
    q = (select(Peer.id, Peer.public_key, Peer.overlay_ip)
         .outerjoin(SetupKey, SetupKey.id == Peer.setup_key_id)
         .where(not_gateway()))
    if ALL_GROUP not in sources:
        q = q.where(Peer.id.in_(select(GroupMember.peer_id).join(
            Group, Group.id == GroupMember.group_id).where(Group.name.in_(sources))))
    return q
