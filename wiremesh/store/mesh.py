"""The mesh as the policy compiler sees it, read from the store in one snapshot: whole, or
as the changes logged since a revision (what a refresh applies to the mesh it holds)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from wiremesh.core.models import HeldMesh, MeshChange, MeshState, PeerInfo, Policy, Route
from wiremesh.core.policy import ALL_GROUP
from wiremesh.core.wire import check_peer_endpoint, endpoint_host_port
from wiremesh.store import policies, routes
from wiremesh.store.changes import GROUP, PEER, POLICIES, ROUTES, Changes
from wiremesh.store.common import counter, hash_secret, now
from wiremesh.store.database import Database
from wiremesh.store.roles import GATEWAY_ROLE
from wiremesh.store.tables import (
    ChangeRow,
    Group,
    GroupMember,
    Peer,
    PolicyRow,
    RouteRow,
    SetupKey,
    User,
)
from wiremesh.store.users import USER_GROUP_PREFIX, user_group


def _endpoints_with_port(endpoints: list[str], port: int) -> list[str]:
    """Endpoints are stored as reported; a bare address gets the peer's listen port. One the
    wire contract refuses is left out (an older server stored what a proxy's
    X-Forwarded-For said, a link-local client's scoped address, a loopback or overlay
    address): agents would refuse every netmap that lists the peer, or send to it."""
    out = []
    for e in endpoints:
        try:
            host, given = endpoint_host_port(check_peer_endpoint(e))
        except ValueError:
            continue
        out.append(f"[{host}]:{given or port}" if ":" in host else f"{host}:{given or port}")
    return out


# Beyond this many peers and groups changed, reading them by id costs more than reading
# everything (and SQLite caps the parameters of one statement).
MAX_CHANGED = 500
_PEER_COLUMNS = (Peer.id, Peer.name, Peer.public_key, Peer.overlay_ip, Peer.endpoints,
                 Peer.listen_port, Peer.agent_version, Peer.os_family, SetupKey.role)
_TOKEN_HASH = len(_PEER_COLUMNS)  # read after them by _live_peers


def _peer_info(row: Any) -> PeerInfo:
    return PeerInfo(row[0], row[1], row[2], row[3],
                    tuple(_endpoints_with_port(row[4], row[5])), row[5], row[6], row[7],
                    gateway=row[8] == GATEWAY_ROLE)


def _live() -> ColumnElement[bool]:
    """A user's peer is in the mesh while its user is enabled and its login fresh (the
    writes that end either log the peer: store/users.py)."""
    return or_(Peer.user_id.is_(None), and_(
        User.disabled_at.is_(None),
        or_(Peer.login_expires_at.is_(None), Peer.login_expires_at > now())))


def not_gateway() -> ColumnElement[bool]:
    """Peers not enrolled as JIT gateways (to be used with an outer join of SetupKey)."""
    return or_(SetupKey.role.is_(None), SetupKey.role != GATEWAY_ROLE)


def _live_peers() -> Any:  # a Select of _PEER_COLUMNS and the token hash
    return (select(*_PEER_COLUMNS, Peer.token_hash).outerjoin(User, User.id == Peer.user_id)
            .outerjoin(SetupKey, SetupKey.id == Peer.setup_key_id).where(_live()))


async def _user_groups(s: AsyncSession, peer_ids: set[int] | None) -> dict[str, set[int]]:
    """Policy groups from users' provider groups (`idp.NAME`) -> their peers (of `peer_ids`;
    None: all)."""
    q = select(User.groups, Peer.id).join(Peer, Peer.user_id == User.id)
    if peer_ids is not None:
        q = q.where(Peer.id.in_(peer_ids))
    out: dict[str, set[int]] = {}
    for claims, pid in await s.execute(q):
        for claim in claims:
            g = user_group(claim)
            if g is not None:
                out.setdefault(g, set()).add(pid)
    return out


class MeshReader:
    """What the netmap hub reads: snapshots of the mesh, the revision, and whether a peer
    exists."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._changes = Changes(db)
        self._peer_infos: dict[int, tuple[tuple[Any, ...], PeerInfo]] = {}
        # The live peers' credentials as last read with them: token hash -> (peer id, public
        # key), and each peer's hash. A token changes only in a logged change (enrolment
        # bumps the peer), so these are as fresh as the netmaps the hub serves.
        self._credentials: dict[str, tuple[int, str]] = {}
        self._hash_of: dict[int, str] = {}

    def credential(self, token: str) -> tuple[int, str] | None:
        """(peer id, public key) of the live peer holding `token`, as of the last read (no
        store round trip); None when that read did not have it."""
        return self._credentials.get(hash_secret(token))

    def _hold_credential(self, row: Any) -> None:
        h = row[_TOKEN_HASH]
        old = self._hash_of.get(row[0])
        if old is not None and old != h:
            self._credentials.pop(old, None)
        self._hash_of[row[0]] = h
        self._credentials[h] = (row[0], row[2])

    def _drop_credential(self, peer_id: int) -> None:
        old = self._hash_of.pop(peer_id, None)
        if old is not None:
            self._credentials.pop(old, None)

    async def revision(self) -> int:
        return await self._changes.revision()

    async def peer_exists(self, peer_id: int) -> bool:
        async with self.db.reads() as s:
            return await s.get(Peer, peer_id) is not None

    async def load_state(self) -> tuple[int, MeshState]:
        """One consistent snapshot (single transaction) and the revision it reflects."""
        async with self.db.reads() as s, s.begin():
            rev = await counter(s, "revision")
            # Plain column rows, not ORM objects, and unchanged rows keep their PeerInfo:
            # a refresh of a large mesh should cost little more than the read itself.
            rows = await s.execute(_live_peers())
            cache, peers = self._peer_infos, {}
            for row in rows:
                key = (*row[:4], tuple(row[4]), *row[5:_TOKEN_HASH])
                hit = cache.get(row[0])
                if hit is None or hit[0] != key:
                    hit = cache[row[0]] = (key, _peer_info(row))
                peers[row[0]] = hit[1]
                self._hold_credential(row)
            for gone in cache.keys() - peers.keys():
                del cache[gone]
            for gone in self._hash_of.keys() - peers.keys():
                self._drop_credential(gone)
            groups: dict[str, set[int]] = {
                g: set() for g in await s.scalars(select(Group.name))
            }
            members = await s.execute(
                select(Group.name, GroupMember.peer_id)
                .join(GroupMember, GroupMember.group_id == Group.id)
            )
            for g, pid in members:
                if pid in peers:
                    groups[g].add(pid)
            for g, pids in (await _user_groups(s, None)).items():
                groups.setdefault(g, set()).update(pids & peers.keys())
            frozen = {g: frozenset(m) for g, m in groups.items()}
            frozen[ALL_GROUP] = frozenset(peers)
            pols = tuple(policies.from_row(r) for r in await s.scalars(
                select(PolicyRow).order_by(PolicyRow.name)))
            rts = tuple(routes.from_row(r) for r in await s.scalars(
                select(RouteRow).order_by(RouteRow.name)))
        return rev, MeshState(peers=peers, groups=frozen, policies=pols, routes=rts)

    async def load_since(self, revision: int, held: HeldMesh,
                         ) -> tuple[int, MeshChange] | None:
        """The store's revision and what changed since `revision`, as the changes logged
        since then tell it, `held` being the mesh at `revision`; None when the log cannot
        tell them all (trimmed, written before the log existed, a store moved back) or they
        are many: load it whole then.

        The reads and the work are proportional to what changed, not to the mesh."""
        async with self.db.reads() as s, s.begin():
            rev = await counter(s, "revision")
            if rev == revision:
                return rev, MeshChange()
            if rev < revision:
                return None
            logged = (await s.execute(select(ChangeRow.revision, ChangeRow.kind, ChangeRow.ref)
                                      .where(ChangeRow.revision > revision))).all()
            if {r[0] for r in logged} != set(range(revision + 1, rev + 1)):
                return None
            peer_ids = {int(ref) for _, kind, ref in logged if kind == PEER}
            group_names = {ref for _, kind, ref in logged if kind == GROUP}
            policy_names = {ref for _, kind, ref in logged if kind == POLICIES}
            route_names = {ref for _, kind, ref in logged if kind == ROUTES}
            if len(peer_ids) + len(group_names) + len(policy_names) + len(route_names) \
                    > MAX_CHANGED or "" in policy_names or "" in route_names or any(
                    g.startswith(USER_GROUP_PREFIX) for g in group_names):
                # Logged without names (by an earlier version), or an admin's group named
                # like a provider group, which merges with it: whole load.
                return None
            peers: dict[int, PeerInfo | None] = {}
            groups: dict[str, frozenset[int] | None] = {}
            if peer_ids:
                for row in await s.execute(_live_peers().where(Peer.id.in_(peer_ids))):
                    peers[row[0]] = _peer_info(row)
                    self._hold_credential(row)
                alive = set(peers)
                for gone in peer_ids - alive:
                    peers[gone] = None
                    self._drop_credential(gone)
                member_of: dict[str, set[int]] = {}
                for pid, g in await s.execute(
                        select(GroupMember.peer_id, Group.name)
                        .join(Group, Group.id == GroupMember.group_id)
                        .where(GroupMember.peer_id.in_(alive))):
                    member_of.setdefault(g, set()).add(pid)
                users_of = await _user_groups(s, alive)
                if any(held.group(g) is None for g in users_of):
                    return None  # a provider group's first member: whole load
                for g, pids in users_of.items():
                    member_of.setdefault(g, set()).update(pids)
                # A group the held mesh does not know yet is read whole below.
                group_names |= {g for g in member_of if held.group(g) is None}
                was_in = {g for pid in peer_ids for g in held.groups_of(pid)}
                for g in (was_in | member_of.keys()) - group_names:
                    m = held.group(g)
                    assert m is not None  # it names a changed peer, or is known (above)
                    now_in = member_of.get(g, set())
                    # Set operations on the changed peers only: `m` may hold 550,000.
                    left = {pid for pid in peer_ids if pid in m and pid not in now_in}
                    came = {pid for pid in now_in if pid not in m}
                    if left or came:
                        groups[g] = m.difference(left).union(came)
            if group_names:
                found: dict[str, set[int]] = {g: set() for g in await s.scalars(
                    select(Group.name).where(Group.name.in_(group_names)))}
                # Live members only, as a whole load counts them.
                for g, pid in await s.execute(
                        select(Group.name, GroupMember.peer_id)
                        .join(GroupMember, GroupMember.group_id == Group.id)
                        .join(Peer, Peer.id == GroupMember.peer_id)
                        .outerjoin(User, User.id == Peer.user_id)
                        .where(Group.name.in_(group_names), _live())):
                    found[g].add(pid)
                for g in group_names:
                    if g not in found:
                        groups[g] = None
                    elif held.group(g) != (members := frozenset(found[g])):
                        groups[g] = members
            pols: dict[str, Policy | None] = dict.fromkeys(policy_names)
            if policy_names:
                pols.update((r.name, policies.from_row(r)) for r in await s.scalars(
                    select(PolicyRow).where(PolicyRow.name.in_(policy_names))))
            rts: dict[str, Route | None] = dict.fromkeys(route_names)
            if route_names:
                rts.update((r.name, routes.from_row(r)) for r in await s.scalars(
                    select(RouteRow).where(RouteRow.name.in_(route_names))))
        return rev, MeshChange(peers, groups, pols, rts)
