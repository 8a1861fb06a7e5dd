"""Policy compiler: from peers, groups, policies and routes to each peer's netmap slice.

Default deny: a peer learns about another peer only when some enabled policy lets one of them
open connections to the other, and its inbound rules list exactly what each source may open.

Semantics (the failover engineer and the agent rely on them):

- Group `all` (ALL_GROUP) always means every peer; an explicit `all` entry in
  `MeshState.groups` is ignored. Group members that are not peers are ignored.
- For an enabled policy P with sources S and destinations D, every d in D gets
  `InboundRule(ip(s), P.protocol, P.ports)` for each s in S (s != d), and s and d know each
  other. A bidirectional policy also works the other way round.
- For each name in `P.destination_routes` naming an enabled route R whose router group has
  members: each source s (other than a router itself) gets `RouteEntry(R)` listing the routers
  other than s as (public key, metric), sorted by metric then router name (a per-router
  override in `R.router_metrics` is keyed by peer name); s and those routers know each other;
  each router gets `ForwardRule(ip(s), R.prefix, P.protocol, P.ports)` and, when
  `R.masquerade`, masquerades into `R.prefix`.
- Policy names and route names are unique; overlay IPs and public keys are unique.
- A JIT gateway (`PeerInfo.gateway`) counts as no peer here: it gets no netmap and is in
  nobody's (it learns whom to admit from its own feed, core/gateway_feed.py).

Public API:

- `compile_netmaps(state) -> dict[peer id, Netmap]`: the full compile (versions are 0).
- `PolicyCompiler(state)`: holds the compiled netmaps (`netmaps`, `netmap(id)`, `state()`).
  `apply(change)` takes a `MeshChange` (peers upserted or removed, groups set or deleted, the
  policy or route list when it changed: what the store's change log tells a refresh) and
  recompiles only the peers the change can touch; `update(new_state)` diffs a whole snapshot
  against the held one and applies the difference the same way (a pass over the mesh). The
  single-change helpers (`upsert_peer`, `remove_peer`, `set_group`, `remove_group`,
  `upsert_policy`, `remove_policy`, `upsert_route`, `remove_route`) build a `MeshChange`.
  Each returns the ids of peers whose netmap changed (a removed peer counts: its netmap is
  gone). Results are identical to `compile_netmaps` of the same state; the work is
  proportional to the netmaps touched, not to the mesh.
- Posture: a posture-checked policy is indexed with a synthetic source group holding the
  source peers that pass (core/posture.py), kept up to date from the changed peers only.

How: each enabled policy holds its members' rules and peer tables; each group merges what
its policies give its members (`_GroupParts`); each combination of groups that some peers
hold merges its groups' parts once (`_Combo`), and those peers' netmaps share the merged
objects (most peers share them with their team or service, so 100,000 netmaps cost about as
much memory as their ~13,000 combinations). A change drops the parts it touches; a
combination notices by identity that its parts moved on and is patched with each changed
part's delta (`_PartsDelta`, computed once per change and shared by every combination holding
the group), so a change costs the combinations it touches, each once, whatever the number of
their peers. Within a change every member that joins or leaves a policy's side is noted
(`_Shifts`); while nothing else moved, a group's parts are patched with those few entries
(and their delta comes out of the patch) instead of merged again from the policies' tables.
Objects whose content did not change are kept, so unchanged netmaps stay identical objects,
and a peer whose netmap still shares every object with its combination is not rebuilt.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ParamSpec, TypeVar

from wiremesh.core.models import MeshChange, MeshState, PeerInfo, Policy, Route
from wiremesh.core.posture import GROUP_PREFIX as POSTURE_PREFIX
from wiremesh.core.posture import compiled, passing, source_group
from wiremesh.core.wire import ForwardRule, InboundRule, Netmap, NetmapPeer, RouteEntry

ALL_GROUP = "all"
_EMPTY: frozenset = frozenset()
_SRC, _DST = 1, 2  # which side of a policy changed
_T = TypeVar("_T")
_P = ParamSpec("_P")
_R = TypeVar("_R")
_Named = TypeVar("_Named", Policy, Route)
_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass
class _CompiledPolicy:
    """An enabled policy with its resolved members and what those members contribute.

    Rule sets and peer tables hold one entry per member, so a membership change patches them
    in O(members changed) Python work, and compiling a netmap merges them at C speed.
    """

    policy: Policy
    src: frozenset[int]
    dst: frozenset[int]
    src_rules: frozenset[InboundRule] = _EMPTY  # what each source may open (to dst members)
    dst_rules: frozenset[InboundRule] = _EMPTY  # the reverse, bidirectional policies only
    src_peers: dict[str, NetmapPeer] = field(default_factory=dict)  # by public key
    dst_peers: dict[str, NetmapPeer] = field(default_factory=dict)
    fwd: dict[str, frozenset[ForwardRule]] = field(default_factory=dict)  # by route prefix

    def in_rule(self, ip: str) -> InboundRule:
        return InboundRule(ip, self.policy.protocol, self.policy.ports)

    def fwd_rule(self, ip: str, prefix: str) -> ForwardRule:
        return ForwardRule(ip, prefix, self.policy.protocol, self.policy.ports)

    def fill(self, np: Mapping[int, NetmapPeer]) -> None:
        proto, ports = self.policy.protocol, self.policy.ports
        self.src_rules = frozenset([InboundRule(np[s].overlay_ip, proto, ports)
                                    for s in self.src])
        if self.policy.bidirectional:
            self.dst_rules = frozenset([InboundRule(np[d].overlay_ip, proto, ports)
                                        for d in self.dst])
        self.src_peers = {np[s].public_key: np[s] for s in self.src}
        self.dst_peers = {np[d].public_key: np[d] for d in self.dst}

    def shift_src(self, gone: list[NetmapPeer], came: list[NetmapPeer], log: _Shifts) -> None:
        """Sources `gone` left and `came` joined (an edited peer is both): patch, and note
        what moved in `log`."""
        self.src_rules = _shifted(self.src_rules, [self.in_rule(p.overlay_ip) for p in gone],
                                  [self.in_rule(p.overlay_ip) for p in came], log.inbound)
        for prefix, rules in self.fwd.items():
            self.fwd[prefix] = _shifted(
                rules, [self.fwd_rule(p.overlay_ip, prefix) for p in gone],
                [self.fwd_rule(p.overlay_ip, prefix) for p in came], log.forward)
        _shift_table(self.src_peers, gone, came, log.keys)

    def shift_dst(self, gone: list[NetmapPeer], came: list[NetmapPeer], log: _Shifts) -> None:
        if self.policy.bidirectional:
            self.dst_rules = _shifted(
                self.dst_rules, [self.in_rule(p.overlay_ip) for p in gone],
                [self.in_rule(p.overlay_ip) for p in came], log.inbound)
        _shift_table(self.dst_peers, gone, came, log.keys)

    def fwd_rules(self, prefix: str, log: _Shifts) -> frozenset[ForwardRule]:
        """The forward rules into `prefix`, made when first asked (noted in `log`: parts
        merged before held none of them)."""
        rules = self.fwd.get(prefix)
        if rules is None:
            rules = frozenset(self.fwd_rule(p.overlay_ip, prefix)
                              for p in self.src_peers.values())
            self.fwd[prefix] = rules
            log.forward.update(rules)
        return rules


def _shift_table(table: dict[str, NetmapPeer], gone: list[NetmapPeer],
                 came: list[NetmapPeer], log: set[str]) -> None:
    for p in gone:
        del table[p.public_key]
        log.add(p.public_key)
    for p in came:
        table[p.public_key] = p
        log.add(p.public_key)


def _shifted(rules: frozenset[_T], lost: list[_T], won: list[_T], log: set[_T]) -> frozenset[_T]:
    """`rules` without `lost` and with `won`, both noted in `log`."""
    log.update(lost)
    log.update(won)
    return rules.difference(lost).union(won)


@dataclass
class _Shifts:
    """What moved in the policies' tables and rule sets within one change. While nothing but
    members moved (no policy or route indexed afresh: not `reshaped`), these are the only
    entries by which a group's parts can differ from what they were before the change, so
    the parts are patched with them instead of merged again from tables of thousands of
    entries (when they are fewer than the parts hold)."""

    keys: set[str] = field(default_factory=set)  # public keys
    inbound: set[InboundRule] = field(default_factory=set)
    forward: set[ForwardRule] = field(default_factory=set)
    reshaped: bool = False

    def size(self) -> int:
        return len(self.keys) + len(self.inbound) + len(self.forward)


@dataclass(frozen=True)
class _CompiledRoute:
    route: Route
    routers: frozenset[int]
    entry: RouteEntry  # every router, best first
    router_peers: dict[str, NetmapPeer]


@dataclass(frozen=True)
class _GroupParts:
    """What membership of one group contributes to a netmap, merged once per group."""

    peers: dict[str, NetmapPeer]
    inbound: frozenset[InboundRule]
    ids: tuple[frozenset[int], ...]
    as_dst: tuple[_CompiledPolicy, ...]
    bidir_as_src: tuple[_CompiledPolicy, ...]
    with_routes: tuple[_CompiledPolicy, ...]  # as source, with destination routes
    # As the router group of routes: forward rules for their policies' sources.
    forward: frozenset[ForwardRule]
    served: tuple[tuple[Route, _CompiledPolicy], ...]  # with at least one source

    def size(self) -> int:
        return len(self.peers) + len(self.inbound) + len(self.forward)


@dataclass(frozen=True)
class _PartsDelta:
    """How a group's parts moved from `old` to `new` within one change: computed once and
    applied to every combination holding the group, so patching one costs the delta (plus
    copying what changed), not a merge of all its parts."""

    old: _GroupParts
    new: _GroupParts
    gone: frozenset[str]  # public keys
    came: tuple[str, ...]  # public keys added, or whose entry changed
    inbound_gone: frozenset[InboundRule]
    inbound_came: frozenset[InboundRule]
    forward_gone: frozenset[ForwardRule]
    forward_came: frozenset[ForwardRule]


@dataclass(frozen=True)
class _Combo:
    """What a peer gets from one combination of groups, merged once for every peer holding
    exactly those groups (most peers share theirs with their team or service).

    A peer that is not in its own `peers` table shares these objects as its netmap; one that
    is (it is a counterpart of its own groups, a router of a route it uses, a source of a
    route it serves) gets a copy without what names itself. A combination is valid while
    the group parts and routes it was merged from are current (checked by identity).
    """

    groups: tuple[str, ...]
    gps: tuple[_GroupParts, ...]  # of `groups`, in order
    peers: dict[str, NetmapPeer]
    inbound: frozenset[InboundRule]
    routes: dict[str, RouteEntry]
    forward: frozenset[ForwardRule]
    masquerade: frozenset[str]
    used_routes: tuple[_CompiledRoute, ...]  # with at least one router
    served: tuple[tuple[Route, _CompiledPolicy], ...]  # as router, with at least one source

    @functools.cached_property
    def template(self) -> Netmap:
        """The netmap of a peer sharing these objects, but for its id, name and overlay IP
        (made when a first peer needs it: one in its own table builds its netmap itself)."""
        return Netmap(version=0, peer_id=0, name="", overlay_ip="", peers=self.peers,
                      inbound=self.inbound, routes=self.routes, forward=self.forward,
                      masquerade=self.masquerade)

    def netmap(self, peer_id: int, name: str, overlay_ip: str) -> Netmap:
        """`template` stamped for one peer. Copying its fields costs a quarter of the
        frozen dataclass's __init__ (a guarded setattr per field), and a change touching a
        large team builds a thousand of these."""
        nm = object.__new__(Netmap)
        fields = nm.__dict__
        fields.update(self.template.__dict__)
        fields["peer_id"] = peer_id
        fields["name"] = name
        fields["overlay_ip"] = overlay_ip
        return nm


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """The build and each change allocate objects without cycles (millions, then thousands:
    netmaps, patched tables and rule sets) that live as long as the mesh does. The cyclic
    collector would scan them again and again for nothing: half the build at 100,000 peers,
    and after a change, young collections walking its rule sets (each referring to thousands
    of older objects) took 50-350 ms at once. So it is off meanwhile, and what was made is
    frozen: out of every collection but an explicit full pass (server/collector.py)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.freeze()
            gc.enable()


def _changing(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """A change, run `_without_cyclic_gc`."""
    @functools.wraps(method)
    def change(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _without_cyclic_gc():
            return method(*args, **kwargs)
    return change


class PolicyCompiler:
    """Compiled netmaps of a mesh, kept up to date change by change (see module docstring)."""

    def __init__(self, state: MeshState) -> None:
        given = _by_name(state.policies, "policy")
        routes = _by_name(state.routes, "route")
        # Gateways are kept aside: named in groups, present in nobody's netmap, given none.
        self._gateways: dict[int, PeerInfo] = {
            pid: p for pid, p in state.peers.items() if p.gateway}
        self._peers: dict[int, PeerInfo] = (
            {pid: p for pid, p in state.peers.items() if not p.gateway}
            if self._gateways else dict(state.peers))
        self._all: set[int] = set(self._peers)
        self._raw: dict[str, frozenset[int]] = {
            g: frozenset(m) for g, m in state.groups.items() if g != ALL_GROUP}
        self._groups_of: dict[int, set[str]] = {}
        for g, m in self._raw.items():
            for pid in m:
                self._groups_of.setdefault(pid, set()).add(g)
        # Effective members by group; `all` is rebuilt only when a policy or route needs it.
        self._members: dict[str, frozenset[int]] = {
            g: m & self._all for g, m in self._raw.items()}
        self._np: dict[int, NetmapPeer] = {pid: _netmap_peer(p) for pid, p in self._peers.items()}

        # The policies as given (what `state()` gives back); the compiled ones are indexed
        # with a posture-checked policy's sources as its synthetic group (core/posture.py).
        self._given: dict[str, Policy] = given
        self._posture: dict[str, Policy] = {
            n: p for n, p in given.items() if p.posture is not None}
        self._cpol: dict[str, _CompiledPolicy] = {}
        self._by_src: dict[str, set[str]] = {}
        self._by_dst: dict[str, set[str]] = {}
        self._by_route: dict[str, set[str]] = {}
        self._routes: dict[str, Route] = {}
        self._croutes: dict[str, _CompiledRoute] = {}
        self._routes_by_group: dict[str, set[str]] = {}
        self._gparts: dict[str, _GroupParts] = {}
        # Within one change: each forgotten group's parts as they were before it (what the
        # combinations hold), the deltas from those to the new parts, and the public keys
        # whose peer entry was replaced (a value change a key diff does not see).
        self._stale: dict[str, _GroupParts] = {}
        self._deltas: dict[str, _PartsDelta] = {}
        self._moved: set[str] = set()
        self._shifts = _Shifts()
        self._combos: dict[frozenset[str], _Combo] = {}
        # Each peer's combination (its groups) and how many peers hold each, so a
        # combination nobody holds any more is dropped; within a change, the peers whose
        # groups changed (the others keep their key).
        self._key_of: dict[int, frozenset[str]] = {}
        self._regrouped: set[int] = set()
        self._key_users: dict[frozenset[str], int] = {}
        with _without_cyclic_gc():
            for r in routes.values():
                self._index_route(r)
            for p in self._posture.values():
                self._set_group(source_group(p.name), self._passing(p))
            for p in given.values():
                self._index_policy(p)
            self._netmaps: dict[int, Netmap] = {
                pid: self._compile(p, self._combo_of(pid)) for pid, p in self._peers.items()}
            self._end_change()

    # --- reading -------------------------------------------------------------------------

    @property
    def netmaps(self) -> Mapping[int, Netmap]:
        """Every peer's current netmap (a read-only live view; version 0)."""
        return MappingProxyType(self._netmaps)

    def netmap(self, peer_id: int) -> Netmap:
        return self._netmaps[peer_id]

    def state(self) -> MeshState:
        """A snapshot of the mesh as the compiler holds it (`all` is listed explicitly)."""
        peers = self._peers | self._gateways
        groups = {g: m for g, m in self._raw.items() if not g.startswith(POSTURE_PREFIX)}
        groups[ALL_GROUP] = frozenset(peers)
        return MeshState(peers=peers, groups=groups,
                         policies=tuple(sorted(self._given.values(), key=_name)),
                         routes=tuple(sorted(self._routes.values(), key=_name)))

    def groups_of(self, peer_id: int) -> frozenset[str]:
        """The groups naming `peer_id` (but `all`), as given."""
        return frozenset(g for g in self._groups_of.get(peer_id, ())
                         if not g.startswith(POSTURE_PREFIX))

    def group(self, name: str) -> frozenset[int] | None:
        """Group `name`'s members as given (ids of absent peers too); None: no such group."""
        return None if name.startswith(POSTURE_PREFIX) else self._raw.get(name)

    # --- changes ---------------------------------------------------------------------------

    @_changing
    def apply(self, change: MeshChange) -> set[int]:
        """Take `change`; returns the ids of peers whose netmap changed or vanished.

        The work is proportional to what the change touches, not to the mesh.
        """
        return self._apply(change)

    @_changing
    def update(self, new: MeshState) -> set[int]:
        """Move to snapshot `new`; returns the ids of peers whose netmap changed or vanished.

        The diff compares objects (identity first, so a snapshot built from the previous one
        by `dataclasses.replace` is diffed fastest), then applies what differs.
        """
        # One pass over the peers (550,000 behind a gateway: each pass costs 0.05-0.1 s).
        old_peers, old_gateways = self._peers, self._gateways
        peers: dict[int, PeerInfo | None] = {}
        kept = 0
        for pid, p in new.peers.items():
            old_p = old_peers.get(pid) or old_gateways.get(pid)
            if old_p is None:
                peers[pid] = p
            else:
                kept += 1
                if old_p is not p and old_p != p:
                    peers[pid] = p
        if kept < len(old_peers) + len(old_gateways):
            for pid in (*old_peers, *old_gateways):
                if pid not in new.peers:
                    peers[pid] = None
        groups: dict[str, frozenset[int] | None] = {
            g: None for g in self._raw
            if g not in new.groups and not g.startswith(POSTURE_PREFIX)}
        for g, m in new.groups.items():
            old = self._raw.get(g)
            if g != ALL_GROUP and (old is None or (old is not m and old != m)):
                groups[g] = frozenset(m)
        return self._apply(MeshChange(
            peers, groups, _changed(self._given, _by_name(new.policies, "policy")),
            _changed(self._routes, _by_name(new.routes, "route"))))

    def upsert_peer(self, peer: PeerInfo) -> set[int]:
        """Add a peer or change its name, key, overlay IP, endpoints or posture report."""
        return self.apply(MeshChange(peers={peer.id: peer}))

    def remove_peer(self, peer_id: int) -> set[int]:
        """Remove a peer (its group memberships stay, as dangling ids that count for nothing)."""
        if peer_id not in self._peers and peer_id not in self._gateways:
            raise KeyError(f"no peer with id {peer_id}")
        return self.apply(MeshChange(peers={peer_id: None}))

    def set_group(self, name: str, members: Iterable[int]) -> set[int]:
        """Create a group or replace its members."""
        return self.apply(MeshChange(groups={name: frozenset(members)}))

    def remove_group(self, name: str) -> set[int]:
        """Delete a group; policies naming it then match nobody through it."""
        if self.group(name) is None:
            raise KeyError(f"no group named {name!r}")
        return self.apply(MeshChange(groups={name: None}))

    def upsert_policy(self, policy: Policy) -> set[int]:
        """Add a policy or replace the one with the same name."""
        return self.apply(MeshChange(policies={policy.name: policy}))

    def remove_policy(self, name: str) -> set[int]:
        if name not in self._given:
            raise KeyError(f"no policy named {name!r}")
        return self.apply(MeshChange(policies={name: None}))

    def upsert_route(self, route: Route) -> set[int]:
        """Add a route or replace the one with the same name."""
        return self.apply(MeshChange(routes={route.name: route}))

    def remove_route(self, name: str) -> set[int]:
        if name not in self._routes:
            raise KeyError(f"no route named {name!r}")
        return self.apply(MeshChange(routes={name: None}))

    def _apply(self, change: MeshChange) -> set[int]:
        for g in change.groups:
            if g == ALL_GROUP:
                raise ValueError(f"group {ALL_GROUP!r} is built in and always holds every peer")
            if g.startswith(POSTURE_PREFIX):
                raise ValueError(f"group {g!r} is the compiler's own (posture)")
        for kind, named in (("policy", change.policies), ("route", change.routes)):
            for name, x in named.items():
                if x is not None and x.name != name:
                    raise ValueError(f"{kind} {x.name!r} given as {name!r}")
        todo: set[int] = set()
        upserts: list[PeerInfo] = []
        for pid, p in change.peers.items():
            if p is not None and not p.gateway:
                self._gateways.pop(pid, None)
                upserts.append(p)
                continue
            if p is None:
                self._gateways.pop(pid, None)
            else:
                self._gateways[pid] = p
            if pid in self._peers:
                todo |= self._remove_peer(pid)
        for g, m in change.groups.items():
            todo |= self._set_group(g, m)
        for p in upserts:
            todo |= self._upsert_peer(p)
        for name, r in change.routes.items():
            old_r = self._routes.get(name)
            if old_r is not r and old_r != r:  # None for an absent or deleted route
                todo |= self._set_route(name, r)
        if change.policies or self._posture:
            todo |= self._set_policies(change)
        return self._recompute(todo)

    def _set_policies(self, change: MeshChange) -> set[int]:
        """Take the change's policies, the synthetic groups of posture-checked ones first:
        they follow their sources' members and the peers' reports (core/posture.py)."""
        todo: set[int] = set()
        given, posture = self._given, self._posture
        if change.policies:
            posture = dict(posture)
            for name, pol in change.policies.items():
                if pol is not None and pol.posture is not None:
                    posture[name] = pol
                else:
                    posture.pop(name, None)
        for name, p in posture.items():
            g = source_group(name)
            old = self._raw.get(g)
            was = given.get(name)
            if old is None or was is None or was.sources != p.sources \
                    or was.posture != p.posture or any(s in change.groups for s in p.sources):
                members = self._passing(p)
            elif change.peers:
                # Only the changed peers can have moved in or out (a report, a membership).
                gone = {pid for pid in change.peers if pid in old}
                came = passing(p, [self._peers[pid] for pid in change.peers if any(
                    self._holds(s, pid) for s in p.sources)])
                if gone == came:
                    continue
                members = old.difference(gone).union(came)
            else:
                continue
            if members != old:
                todo |= self._set_group(g, members)
        for name, new in change.policies.items():
            old_pol = given.get(name)
            if old_pol is not new and old_pol != new:
                todo |= self._set_policy(name, new)
                if new is None:
                    del given[name]
                else:
                    given[name] = new
        for name in self._posture.keys() - posture.keys():
            todo |= self._set_group(source_group(name), None)
        self._posture = posture
        return todo

    def _passing(self, p: Policy) -> frozenset[int]:
        """The members of posture-checked policy `p`'s synthetic group, worked out afresh."""
        return passing(p, [self._peers[pid] for pid in self._union(p.sources)])

    def _holds(self, g: str, pid: int) -> bool:
        """Is present peer `pid` a member of group `g`?"""
        return pid in self._all if g == ALL_GROUP else pid in self._members.get(g, _EMPTY)

    # --- change internals: each mutates the indexes and returns the peers to recompile -----

    def _upsert_peer(self, p: PeerInfo) -> set[int]:
        self._peers[p.id] = p
        old_np, new_np = self._np.get(p.id), _netmap_peer(p)
        if old_np == new_np:
            return set()  # nothing netmaps carry changed (at most the listen port)
        self._np[p.id] = new_np
        self._moved.add(new_np.public_key)
        groups = (*self._groups_of.get(p.id, ()), ALL_GROUP)
        if old_np is None:
            self._all.add(p.id)
            todo = {p.id}
            for g in groups:
                todo |= self._refresh_group(g, (p.id,))
            return todo
        todo = {p.id} | self._known(p.id)
        # The peer is in every policy its groups are named by; a policy naming several of
        # them holds it once, so it is patched once.
        for index, shift, side in ((self._by_src, _CompiledPolicy.shift_src, _SRC),
                                   (self._by_dst, _CompiledPolicy.shift_dst, _DST)):
            for name in set().union(*(index.get(g, ()) for g in groups)):
                cp = self._cpol[name]
                shift(cp, [old_np], [new_np], self._shifts)
                self._touch(cp, side)
        # Names order routers and key metric overrides; keys identify them in route entries.
        for g in groups:
            for rname in self._routes_by_group.get(g, ()):
                self._drop_route(rname)
        return todo

    def _remove_peer(self, pid: int) -> set[int]:
        todo = {pid} | self._known(pid)
        self._all.discard(pid)
        for g in (*self._groups_of.get(pid, ()), ALL_GROUP):
            self._refresh_group(g, (pid,))
        del self._peers[pid]
        del self._np[pid]
        return todo

    def _set_group(self, g: str, members: frozenset[int] | None) -> set[int]:
        """Replace group `g`'s members; None deletes the group."""
        old = self._raw.get(g, _EMPTY)
        new = _EMPTY if members is None else members
        left, joined = old - new, new - old
        for pid in left:
            self._groups_of[pid].discard(g)
        for pid in joined:
            self._groups_of.setdefault(pid, set()).add(g)
        self._regrouped |= left
        self._regrouped |= joined
        if members is None:
            self._raw.pop(g, None)
        else:
            self._raw[g] = members
        old_eff = self._members.get(g, _EMPTY)
        new_eff = new & self._all
        if new_eff == old_eff:
            # Only ids of absent peers changed (e.g. a joining peer's groups set first).
            self._members[g] = new_eff
            todo: set[int] = set()
        else:
            moved = old_eff ^ new_eff
            todo = self._refresh_group(g, moved) | moved
        if members is None:
            self._members.pop(g, None)
        return todo

    def _refresh_group(self, g: str, moved: Collection[int]) -> set[int]:
        """Recompute group `g`'s members, which only the peers `moved` joined or left, and
        patch what depends on them (looking at those peers only, not at every member).

        A peer being removed is already out of `_all` but still in `_np`, so what it
        contributed can be taken out. Returns the peers whose netmap may depend on membership
        of `g` (its counterparts).
        """
        if g == ALL_GROUP:
            self._members.pop(g, None)
        else:
            self._members[g] = self._raw.get(g, _EMPTY) & self._all
        for name in self._by_src.get(g, ()):
            cp = self._cpol[name]
            new_src, src = self._sources(cp.policy), cp.src
            cp.src = new_src
            gone, came = self._moved_peers(moved, src, new_src)
            if gone or came:
                cp.shift_src(gone, came, self._shifts)
                self._touch(cp, _SRC)
        for name in self._by_dst.get(g, ()):
            cp = self._cpol[name]
            new_dst, dst = self._union(cp.policy.destinations), cp.dst
            cp.dst = new_dst
            gone, came = self._moved_peers(moved, dst, new_dst)
            if gone or came:
                cp.shift_dst(gone, came, self._shifts)
                self._touch(cp, _DST)
        for rname in self._routes_by_group.get(g, ()):
            self._drop_route(rname)
        return self._counterparts(g)

    def _moved_peers(self, moved: Collection[int], was: frozenset[int], now: frozenset[int],
                     ) -> tuple[list[NetmapPeer], list[NetmapPeer]]:
        """Of the peers `moved`, those that left `was` for `now` and those that joined."""
        np = self._np
        return ([np[i] for i in moved if i in was and i not in now],
                [np[i] for i in moved if i in now and i not in was])

    def _counterparts(self, g: str) -> set[int]:
        """Peers whose netmap can change when a peer joins or leaves group `g`."""
        out: set[int] = set()
        for name in self._by_src.get(g, ()):
            cp = self._cpol[name]
            out |= cp.dst
            for rname in cp.policy.destination_routes:
                cr = self._croute(rname)
                if cr is not None:
                    out |= cr.routers
        for name in self._by_dst.get(g, ()):
            out |= self._cpol[name].src
        for rname in self._routes_by_group.get(g, ()):
            for name in self._by_route.get(rname, ()):
                out |= self._cpol[name].src
        return out

    def _policy_reach(self, cp: _CompiledPolicy) -> set[int]:
        """Every peer whose netmap an enabled policy contributes to."""
        out = set(cp.src | cp.dst)
        for rname in cp.policy.destination_routes:
            cr = self._croute(rname)
            if cr is not None:
                out |= cr.routers
        return out

    def _set_policy(self, name: str, p: Policy | None) -> set[int]:
        todo: set[int] = set()
        old = self._cpol.get(name)
        if old is not None:
            todo |= self._policy_reach(old)
        self._unindex_policy(name)
        if p is not None:
            self._index_policy(p)
            new = self._cpol.get(name)
            if new is not None:
                todo |= self._policy_reach(new)
        return todo

    def _set_route(self, name: str, r: Route | None) -> set[int]:
        todo = self._route_reach(name)
        self._drop_route(name)
        self._unindex_route(name)
        if r is not None:
            self._index_route(r)
            self._drop_route(name)
        for pname in self._by_route.get(name, ()):
            self._cpol[pname].fwd.clear()
        self._shifts.reshaped = True
        return todo | self._route_reach(name)

    def _route_reach(self, name: str) -> set[int]:
        cr = self._croute(name)
        if cr is None:
            return set()
        out = set(cr.routers)
        for pname in self._by_route.get(name, ()):
            out |= self._cpol[pname].src
        return out

    # --- indexes -----------------------------------------------------------------------------

    def _group(self, g: str) -> frozenset[int]:
        """Group `g`'s present members."""
        members = self._members.get(g)
        if members is None:
            if g != ALL_GROUP:
                return _EMPTY
            members = self._members[g] = frozenset(self._all)
        return members

    def _union(self, groups: Sequence[str]) -> frozenset[int]:
        if len(groups) == 1:
            return self._group(groups[0])  # most policies name one group: no copy
        return _EMPTY.union(*(self._group(g) for g in groups))

    def _sources(self, p: Policy) -> frozenset[int]:
        """The peers `p` lets open connections: the one place a per-policy filter of its
        source groups' members belongs (a peer filtered out must then also get a
        combination of its own: `_enter` names what its netmap is merged from)."""
        return self._union(p.sources)

    def _index_policy(self, given: Policy) -> None:
        if not given.enabled:
            return
        p = compiled(given)
        cp = _CompiledPolicy(p, self._sources(p), self._union(p.destinations))
        cp.fill(self._np)
        self._cpol[p.name] = cp
        self._shifts.reshaped = True
        self._touch(cp, _SRC | _DST)
        for g in set(p.sources):
            self._by_src.setdefault(g, set()).add(p.name)
        for g in set(p.destinations):
            self._by_dst.setdefault(g, set()).add(p.name)
        for r in set(p.destination_routes):
            self._by_route.setdefault(r, set()).add(p.name)

    def _unindex_policy(self, name: str) -> None:
        cp = self._cpol.pop(name, None)
        if cp is None:
            return
        self._shifts.reshaped = True
        self._touch(cp, _SRC | _DST)
        for index, keys in ((self._by_src, cp.policy.sources),
                            (self._by_dst, cp.policy.destinations),
                            (self._by_route, cp.policy.destination_routes)):
            for k in set(keys):
                names = index[k]
                names.discard(name)
                if not names:
                    del index[k]

    def _touch(self, cp: _CompiledPolicy, side: int) -> None:
        """`cp`'s sources (side _SRC) or destinations (_DST) changed: forget the merged
        parts that hold them (the other side's groups, and as sources of routes the
        routers')."""
        if side & _SRC:
            for g in cp.policy.destinations:
                self._forget(g)
            for rname in cp.policy.destination_routes:
                r = self._routes.get(rname)
                if r is not None:
                    self._forget(r.router_group)
        if side & _DST:
            for g in cp.policy.sources:
                self._forget(g)

    def _drop_route(self, name: str) -> None:
        """Route `name` or its routers changed: forget it and what merged it."""
        self._croutes.pop(name, None)
        r = self._routes.get(name)
        if r is not None:
            self._forget(r.router_group)
        for pname in self._by_route.get(name, ()):
            for g in self._cpol[pname].policy.sources:
                self._forget(g)

    def _forget(self, g: str) -> None:
        """Group `g`'s parts changed (the combinations holding it see that lazily)."""
        gp = self._gparts.pop(g, None)
        if gp is not None:
            self._stale.setdefault(g, gp)

    def _group_parts(self, g: str) -> _GroupParts:
        gp = self._gparts.get(g)
        if gp is not None:
            return gp
        as_src = tuple(self._cpol[n] for n in self._by_src.get(g, ()))
        as_dst = tuple(self._cpol[n] for n in self._by_dst.get(g, ()))
        bidir = tuple(cp for cp in as_src if cp.policy.bidirectional)
        tables = [cp.src_peers for cp in as_dst] + [cp.dst_peers for cp in as_src]
        ids = [cp.src for cp in as_dst] + [cp.dst for cp in as_src]
        served: list[tuple[Route, _CompiledPolicy]] = []
        forward: list[frozenset[ForwardRule]] = []
        for rname in self._routes_by_group.get(g, ()):
            route = self._routes[rname]
            for name in self._by_route.get(rname, ()):
                cp = self._cpol[name]
                if cp.src:
                    served.append((route, cp))
                    forward.append(cp.fwd_rules(route.prefix, self._shifts))
                    tables.append(cp.src_peers)
                    ids.append(cp.src)
        rule_sets = [cp.src_rules for cp in as_dst] + [cp.dst_rules for cp in bidir]
        old, s = self._stale.get(g), self._shifts
        if old is None or s.reshaped or s.size() > old.size() or not _same_cps(
                served, old.served):
            delta = None
            peers = _merge_tables(tables)
            inbound, fwd = _union(rule_sets), _union(forward)
        else:
            # Only members moved since `old` was merged: patch it with what moved (the
            # delta every combination holding the group then applies) instead of merging
            # tables and rule sets of thousands of entries again.
            gone, came = _table_moves(s.keys | self._moved, old.peers, tables)
            in_moves = _set_moves(s.inbound, old.inbound, rule_sets)
            fwd_moves = _set_moves(s.forward, old.forward, forward)
            delta = gone, tuple(came), *in_moves, *fwd_moves
            peers = old.peers
            if gone or came:
                peers = peers.copy()
                for k in gone:
                    del peers[k]
                peers.update(came)
            inbound, fwd = _toggled(old.inbound, *in_moves), _toggled(old.forward, *fwd_moves)
        gp = _GroupParts(
            peers=peers, inbound=inbound, ids=tuple(ids), as_dst=as_dst, bidir_as_src=bidir,
            with_routes=tuple(cp for cp in as_src if cp.policy.destination_routes),
            forward=fwd, served=tuple(served))
        self._gparts[g] = gp
        if old is not None and delta is not None:
            self._deltas[g] = _PartsDelta(old, gp, *delta)
        return gp

    def _combo(self, key: frozenset[str]) -> _Combo:
        """The merged parts of the peers whose groups are `key` (plus `all`)."""
        old = self._combos.get(key)
        if old is not None and all(
                self._gparts.get(g) is gp for g, gp in zip(old.groups, old.gps, strict=True)
        ) and all(self._croutes.get(cr.route.name) is cr for cr in old.used_routes):
            return old
        groups = (*key, ALL_GROUP) if old is None else old.groups
        gparts = self._gparts
        gps = tuple(gparts.get(g) or self._group_parts(g) for g in groups)
        tables = [gp.peers for gp in gps]
        routes: dict[str, RouteEntry] = {}
        used: list[_CompiledRoute] = []
        for gp in gps:
            for cp in gp.with_routes:
                for rname in cp.policy.destination_routes:
                    cr = self._croute(rname)
                    if cr is not None and cr.routers and rname not in routes:
                        routes[rname] = cr.entry
                        used.append(cr)
                        tables.append(cr.router_peers)
        served = tuple(rc for gp in gps for rc in gp.served)
        masquerade = frozenset(r.prefix for r, _ in served if r.masquerade)
        patched = None if old is None else self._patched(old, gps, tables, used)
        if patched is not None:
            peers, inbound, forward = patched
        else:
            peers = _merge_tables(tables)
            inbound = _union([gp.inbound for gp in gps])
            forward = _union([gp.forward for gp in gps])
        if old is not None:
            # Keep the objects whose content did not change: netmaps sharing them then
            # compare equal by identity, and the hub's diff skips them.
            if patched is None:
                peers = _kept(old.peers, peers)
                inbound = _kept(old.inbound, inbound)
                forward = _kept(old.forward, forward)
            routes = _kept(old.routes, routes)
            masquerade = _kept(old.masquerade, masquerade)
        combo = _Combo(
            groups=groups, gps=gps, peers=peers, inbound=inbound, routes=routes,
            forward=forward, masquerade=masquerade, used_routes=tuple(used), served=served)
        self._combos[key] = combo
        return combo

    def _patched(self, old: _Combo, gps: tuple[_GroupParts, ...],
                 tables: list[dict[str, NetmapPeer]], used: list[_CompiledRoute],
                 ) -> tuple[dict[str, NetmapPeer], frozenset[InboundRule],
                            frozenset[ForwardRule]] | None:
        """`old`'s peers, inbound and forward rules moved on to parts `gps` by applying the
        deltas of the parts that changed (None when one is not known: merge afresh).

        An entry a changed part lost stays while another part still holds it (parts
        overlap); an entry a part gained is new to the combination unless another part
        held it already. Objects whose content does not change are kept as they are."""
        if len(used) != len(old.used_routes) or any(
                a is not b for a, b in zip(used, old.used_routes, strict=False)):
            return None  # the routers' tables moved: rare, merge afresh
        deltas = []
        for g, was, now in zip(old.groups, old.gps, gps, strict=True):
            if was is not now:
                d = self._delta(g, was, now)
                if d is None:
                    return None
                deltas.append(d)
        peers = old.peers
        copied = False
        for d in deltas:
            for k in d.gone:
                if k in peers and not any(k in t for t in tables):
                    if not copied:
                        peers, copied = peers.copy(), True
                    del peers[k]
        for d in deltas:
            new_peers = d.new.peers
            for k in d.came:
                v = new_peers[k]
                if peers.get(k) is not v:
                    if not copied:
                        peers, copied = peers.copy(), True
                    peers[k] = v
        inbound = _patch_set(old.inbound, [d.inbound_gone for d in deltas],
                             [d.inbound_came for d in deltas], [gp.inbound for gp in gps])
        forward = _patch_set(old.forward, [d.forward_gone for d in deltas],
                             [d.forward_came for d in deltas], [gp.forward for gp in gps])
        return peers, inbound, forward

    def _delta(self, g: str, old: _GroupParts, new: _GroupParts) -> _PartsDelta | None:
        """The delta of group `g`'s parts from `old` to `new` in this change, if known."""
        d = self._deltas.get(g)
        if d is not None and d.old is old and d.new is new:
            return d
        if self._stale.get(g) is not old or self._gparts.get(g) is not new:
            return None  # `old` is older than this change (its combination went unused)
        # Merged afresh (policies or routes were indexed again, a route's sources emptied, or
        # more moved than the parts hold): what moved is found by diffing.
        was, now = old.peers, new.peers
        came = now.keys() - was.keys()
        came.update(k for k in self._moved if k in now and was.get(k) is not now[k])
        d = _PartsDelta(
            old, new, frozenset(was.keys() - now.keys()), tuple(came),
            old.inbound - new.inbound, new.inbound - old.inbound,
            old.forward - new.forward, new.forward - old.forward)
        self._deltas[g] = d
        return d

    def _index_route(self, r: Route) -> None:
        self._routes[r.name] = r
        if r.enabled:
            self._routes_by_group.setdefault(r.router_group, set()).add(r.name)

    def _unindex_route(self, name: str) -> None:
        r = self._routes.pop(name, None)
        self._croutes.pop(name, None)
        if r is not None and r.enabled:
            names = self._routes_by_group[r.router_group]
            names.discard(name)
            if not names:
                del self._routes_by_group[r.router_group]

    def _croute(self, name: str) -> _CompiledRoute | None:
        """The enabled route `name` with its routers resolved (cached until they change)."""
        cr = self._croutes.get(name)
        if cr is not None:
            return cr
        r = self._routes.get(name)
        if r is None or not r.enabled:
            return None
        routers = self._group(r.router_group)
        overrides = dict(r.router_metrics)
        ranked = sorted(
            (overrides.get(self._peers[pid].name, r.metric), self._peers[pid].name, pid)
            for pid in routers
        )
        entry = RouteEntry(r.name, r.prefix,
                           tuple((self._peers[pid].public_key, m) for m, _, pid in ranked))
        cr = _CompiledRoute(r, routers, entry,
                            {self._np[pid].public_key: self._np[pid] for pid in routers})
        self._croutes[name] = cr
        return cr

    # --- compiling one peer ------------------------------------------------------------------

    def _combo_of(self, x: int) -> _Combo:
        return self._combo(self._enter(x))

    def _enter(self, x: int) -> frozenset[str]:
        """x's combination key, counted as x's (and x no longer counted for its old one)."""
        old = self._key_of.get(x)
        if old is not None and x not in self._regrouped:
            return old
        key = frozenset(self._groups_of.get(x, ()))
        if old != key:
            self._key_of[x] = key
            self._key_users[key] = self._key_users.get(key, 0) + 1
            if old is not None:
                self._release(old)
        return key

    def _release(self, key: frozenset[str]) -> None:
        n = self._key_users[key] - 1
        if n:
            self._key_users[key] = n
        else:
            del self._key_users[key]
            self._combos.pop(key, None)

    def _known(self, x: int) -> frozenset[int]:
        """The peers in x's netmap, by id: the only peers whose netmaps mention x."""
        c = self._combo_of(x)
        return _union([i for gp in c.gps for i in gp.ids]
                      + [cr.routers for cr in c.used_routes]) - {x}

    def _compile(self, me: PeerInfo, c: _Combo) -> Netmap:
        """Peer `me`'s netmap, from its combination `c`."""
        x, ip = me.id, me.overlay_ip
        if me.public_key not in c.peers:
            return c.netmap(x, me.name, ip)
        # x is a counterpart, router or source in its own combination: leave out whatever
        # names x itself (a rule from x's own address exists only through these policies).
        peers = c.peers.copy()
        del peers[me.public_key]
        own = {cp.in_rule(ip) for gp in c.gps for cp in gp.as_dst if x in cp.src}
        own.update(cp.in_rule(ip) for gp in c.gps for cp in gp.bidir_as_src if x in cp.dst)
        routes = c.routes
        mine = [cr for cr in c.used_routes if x in cr.routers]
        if mine:
            routes = dict(routes)
            for cr in mine:
                if len(cr.routers) == 1:
                    del routes[cr.route.name]  # no router other than x itself
                else:
                    routes[cr.route.name] = RouteEntry(
                        cr.entry.name, cr.entry.prefix,
                        tuple(t for t in cr.entry.routers if t[0] != me.public_key))
        own_fwd = {cp.fwd_rule(ip, r.prefix) for r, cp in c.served if x in cp.src}
        masq = c.masquerade
        if own_fwd:
            # A prefix x serves only to itself is not masqueraded.
            masq = frozenset(r.prefix for r, cp in c.served
                             if r.masquerade and len(cp.src) - (x in cp.src) > 0)
        return Netmap(version=0, peer_id=x, name=me.name, overlay_ip=ip, peers=peers,
                      inbound=c.inbound - own if own else c.inbound, routes=routes,
                      forward=c.forward - own_fwd if own_fwd else c.forward,
                      masquerade=masq)

    def _recompute(self, todo: Iterable[int]) -> set[int]:
        changed: set[int] = set()
        by_key: dict[frozenset[str], list[PeerInfo]] = {}
        # Each lookup in these maps of every peer is a few cache misses (a peer's data is
        # scattered over a heap of gigabytes): each peer is looked up once.
        netmaps, peers = self._netmaps, self._peers
        for x in todo:
            me = peers.get(x)
            if me is None:
                if netmaps.pop(x, None) is not None:
                    changed.add(x)
                key = self._key_of.pop(x, None)
                if key is not None:
                    self._release(key)
                continue
            by_key.setdefault(self._enter(x), []).append(me)
        # One combination serves all its peers (hundreds in a change): bring it up to date
        # once, and skip the peers whose netmap still shares every object with it.
        for key, mes in by_key.items():
            c = self._combo(key)
            for me in mes:
                x = me.id
                old = netmaps.get(x)
                if old is not None and old.peers is c.peers and old.inbound is c.inbound \
                        and old.routes is c.routes and old.forward is c.forward \
                        and old.masquerade is c.masquerade \
                        and me.name == old.name and me.overlay_ip == old.overlay_ip \
                        and me.public_key not in c.peers:
                    continue
                nm = self._compile(me, c)
                # Tables of different sizes differ: most changes add or drop a peer.
                if old is None or len(old.peers) != len(nm.peers) or old != nm:
                    netmaps[x] = nm
                    changed.add(x)
        self._end_change()
        return changed

    def _end_change(self) -> None:
        """Forget what held only within a change: combinations not refreshed by now merge
        afresh when next needed."""
        self._stale.clear()
        self._deltas.clear()
        self._moved.clear()
        self._regrouped.clear()
        self._shifts = _Shifts()


def _same_cps(a: Sequence[tuple[Route, _CompiledPolicy]],
              b: Sequence[tuple[Route, _CompiledPolicy]]) -> bool:
    """Do `a` and `b` pair the very same compiled policies, in order?"""
    return len(a) == len(b) and all(x[1] is y[1] for x, y in zip(a, b, strict=True))


def _kept(old: _T, new: _T) -> _T:
    return old if old == new else new


def _patch_set(old: frozenset[_T], gone: list[frozenset[_T]], came: list[frozenset[_T]],
               parts: list[frozenset[_T]]) -> frozenset[_T]:
    """The union of `parts`, given `old` (their union before) and each changed part's lost
    and gained elements."""
    # One part at a time: `difference(*parts)` walks every part past the first whole, and
    # looking elements up from Python hashes each rule again (rules do not keep theirs).
    lost = _EMPTY.union(*gone)
    for p in parts:
        if not lost:
            break
        lost = lost.difference(p)
    return _toggled(old, lost, _EMPTY.union(*came).difference(old))


def _toggled(old: frozenset[_T], lost: Collection[_T], added: Collection[_T]) -> frozenset[_T]:
    """`old` without `lost` (elements of it) and with `added` (new to it)."""
    # Each operation copies `old` (tens of thousands of rules for a site's servers): one.
    if lost and added:
        return old.difference(lost).union(added)
    return old.difference(lost) if lost else old.union(added) if added else old


def _table_moves(suspects: Iterable[str], was: Mapping[str, NetmapPeer],
                 tables: list[dict[str, NetmapPeer]],
                 ) -> tuple[frozenset[str], dict[str, NetmapPeer]]:
    """How the merge of `tables` differs from `was`, which it can only by keys in
    `suspects`: (the keys it lost, the entries it gained or replaced). Every table holding
    a peer holds the same entry for it."""
    gone: list[str] = []
    came: dict[str, NetmapPeer] = {}
    for k in suspects:
        for t in tables:
            v = t.get(k)
            if v is not None:
                if was.get(k) is not v:
                    came[k] = v
                break
        else:
            if k in was:
                gone.append(k)
    return frozenset(gone), came


def _set_moves(suspects: set[_T], was: frozenset[_T], parts: list[frozenset[_T]],
               ) -> tuple[frozenset[_T], frozenset[_T]]:
    """How the union of `parts` differs from `was`, which it can only by elements in
    `suspects`: (the elements it lost, those it gained). Set operations, not lookups from
    Python: they use the hashes the sets keep."""
    if not suspects:
        return _EMPTY, _EMPTY
    held = _EMPTY.union(*[suspects & p for p in parts])
    return frozenset((suspects & was) - held), held - was


def _union(sets: list[frozenset]) -> frozenset:
    """Union starting from the largest set (shared as is when the rest add nothing)."""
    sets = [s for s in sets if s]
    if not sets:
        return _EMPTY
    big = max(sets, key=len)
    rest = [s for s in sets if s is not big and not s <= big]
    return big.union(*rest) if rest else big


def _merge_tables(tables: list[dict[str, NetmapPeer]]) -> dict[str, NetmapPeer]:
    """A new dict holding every table's entries (copying the largest is the fast path)."""
    tables = [t for t in tables if t]
    if not tables:
        return {}
    big = max(tables, key=len)
    out = big.copy()
    for t in tables:
        if t is not big:
            out.update(t)
    return out


def _netmap_peer(p: PeerInfo) -> NetmapPeer:
    return NetmapPeer(p.public_key, p.name, p.overlay_ip, p.endpoints)


def _name(x: Policy | Route) -> str:
    return x.name


def _changed(old: Mapping[_K, _V], new: Mapping[_K, _V]) -> dict[_K, _V | None]:
    """The entries of `new` that are not the very objects of `old`, and None for each key
    gone (`apply` compares the values themselves)."""
    out: dict[_K, _V | None] = {k: None for k in old.keys() - new.keys()}
    out.update((k, x) for k, x in new.items() if old.get(k) is not x)
    return out


def mesh_change(old: MeshState, new: MeshState) -> MeshChange:
    """What moved from snapshot `old` to `new`, found by identity: the peers are not even
    looked at when both hold the same dict (as a policy file's `apply` gives)."""
    groups = _changed(old.groups, new.groups)
    groups.pop(ALL_GROUP, None)
    return MeshChange(
        {} if new.peers is old.peers else _changed(old.peers, new.peers),
        {g: None if m is None else frozenset(m) for g, m in groups.items()},
        _changed(_by_name(old.policies, "policy"), _by_name(new.policies, "policy")),
        _changed(_by_name(old.routes, "route"), _by_name(new.routes, "route")))


def _by_name(items: Iterable[_Named], kind: str) -> dict[str, _Named]:
    """`items` by name, refusing a name given twice."""
    out: dict[str, _Named] = {}
    for x in items:
        if x.name in out:
            raise ValueError(f"duplicate {kind} name {x.name!r}")
        out[x.name] = x
    return out


def compile_netmaps(state: MeshState) -> dict[int, Netmap]:
    """Every peer's netmap (version 0; the caller stamps versions)."""
    return dict(PolicyCompiler(state).netmaps)
