"""The known-peer feed of JIT gateways: who a gateway must know, paged, and what changed
since a revision (from the change log).

A gateway is a peer enrolled with a setup key of role `gateway`. It knows the members of the
groups that policies let reach it (core/gateway_feed.py), except other gateways; each known
peer comes as (peer id, public key, overlay address).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, select
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
    groups: frozenset[str]  # the groups admitted at `revision` (may hold `all`)


@dataclass(frozen=True)
class KnownChanges:
    """What changed in a gateway's known set between two revisions. `reset`: the log cannot
    tell (trimmed, a group the gateway admitted had its members replaced, `all` came or
    went, or the policies changed and the gateway did not say which groups it held): sync
    again from page 1."""

    revision: int
    upsert: list[KnownRow]
    remove: list[int]  # peer ids
    groups: frozenset[str]  # the groups admitted at `revision` (no change: `held` again)
    reset: bool = False


# A policy change that lets in more peers than this is sent as a reset: paging is cheaper.
MAX_DELTA = 50_000


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
            sources = await _sources(s, gateway_id)
            rows = [(r[0], r[1], r[2]) for r in await s.execute(
                _known(sources).where(Peer.id > after).order_by(Peer.id).limit(limit))]
        return KnownPage(rev, rows, rows[-1][0] if len(rows) == limit else None, sources)

    async def changes(self, gateway_id: int, since: int,
                      held: frozenset[str] | None = None) -> KnownChanges:
        """The changes since revision `since`, for a gateway whose cache holds the groups
        `held` (as the last answer named them; None: it does not know)."""
        async with self.db.reads() as s, s.begin():
            rev = await counter(s, "revision")
            if rev == since:
                return KnownChanges(rev, [], [], held or frozenset())
            logged = (await s.execute(select(ChangeRow.revision, ChangeRow.kind, ChangeRow.ref)
                                      .where(ChangeRow.revision > since))).all()
            peer_ids = {int(ref) for _, kind, ref in logged if kind == PEER}
            replaced = {ref for _, kind, ref in logged if kind == GROUP}
            new = await _sources(s, gateway_id)
            if held is None:
                # Without the policies' change, nor the gateway's groups, nor the whole
                # membership of a group it admits, the admitted groups are the same.
                mine = await _groups_of(s, gateway_id)
                if (any(kind == POLICIES for _, kind, _ in logged) or gateway_id in peer_ids
                        or replaced & (new | mine)):
                    return KnownChanges(rev, [], [], new, reset=True)
                held = new
            entered, left = new - held, held - new
            if (rev < since or {r[0] for r in logged} != set(range(since + 1, rev + 1))
                    or ALL_GROUP in entered | left or (ALL_GROUP not in new and replaced & held)):
                # What a replaced group held before is not logged.
                return KnownChanges(rev, [], [], new, reset=True)
            # In: the members of groups that came (or were replaced), and changed peers.
            grew = set() if ALL_GROUP in new else entered | (replaced & new)
            cond: ColumnElement[bool] = Peer.id.in_(peer_ids)
            if grew:
                cond = cond | Peer.id.in_(_members(grew))
            rows = [(r[0], r[1], r[2]) for r in await s.execute(
                _known(new).where(cond).limit(MAX_DELTA + 1))]
            if len(rows) > MAX_DELTA:
                return KnownChanges(rev, [], [], new, reset=True)
            # Out: changed peers, and members of groups that left, no longer admitted.
            maybe_out = set(peer_ids)
            if left:
                maybe_out |= set(await s.scalars(_members(left)))
                maybe_out -= set(await s.scalars(
                    _known(new, Peer.id).where(Peer.id.in_(_members(left)))))
        return KnownChanges(rev, rows, sorted(maybe_out - {r[0] for r in rows}), new)


async def _groups_of(s: AsyncSession, peer_id: int) -> set[str]:
    return set(await s.scalars(select(Group.name).join(
        GroupMember, GroupMember.group_id == Group.id).where(GroupMember.peer_id == peer_id)))


async def _sources(s: AsyncSession, gateway_id: int) -> frozenset[str]:
    pols = [policies.from_row(r) for r in await s.scalars(select(PolicyRow))]
    return admitted_groups(pols, await _groups_of(s, gateway_id))


def _members(groups: Iterable[str]) -> Select[Any]:
    return select(GroupMember.peer_id).join(Group, Group.id == GroupMember.group_id).where(
        Group.name.in_(list(groups)))


def _known(sources: frozenset[str], *columns: Any) -> Select[Any]:
    """The query of the known peers of a gateway admitting `sources` (to be narrowed and
    ordered by the caller): (id, public key, overlay address) unless `columns` are named."""
    q = (select(*(columns or (Peer.id, Peer.public_key, Peer.overlay_ip)))
         .outerjoin(SetupKey, SetupKey.id == Peer.setup_key_id).where(not_gateway()))
    if ALL_GROUP not in sources:
        # Asked per peer (an index probe), not `id IN (members)`: that list is built whole
        # for every statement, 550,000 ids for a delta of a few peers (0.4 s of CPU).
        q = q.where(select(GroupMember.peer_id).join(Group, Group.id == GroupMember.group_id)
                    .where(GroupMember.peer_id == Peer.id, Group.name.in_(list(sources)))
                    .exists())
    return q
