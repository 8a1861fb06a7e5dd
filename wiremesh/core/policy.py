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

Public API:

- `compile_netmaps(state) -> dict[peer id, Netmap]`: the full compile (versions are 0).
- `PolicyCompiler(state)`: holds the compiled netmaps (`netmaps`, `netmap(id)`, `state()`).
  `update(new_state)` diffs the new snapshot against the held one and recompiles only the
  peers the change can touch; the fine-grained `upsert_peer`, `remove_peer`, `set_group`,
  `remove_group`, `upsert_policy`, `remove_policy`, `upsert_route`, `remove_route` do the same
  for one change without diffing. Each returns the ids of peers whose netmap changed (a removed
  peer counts: its netmap is gone). Results are identical to `compile_netmaps` of the same
  state; the work is proportional to the netmaps touched, not to the mesh.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from wiremesh.core.models import MeshState, PeerInfo, Policy, Route
from wiremesh.core.netmap import ForwardRule, InboundRule, Netmap, NetmapPeer, RouteEntry

ALL_GROUP = "all"
_EMPTY: frozenset = frozenset()


@dataclass
class _CompiledPolicy:
    """An enabled policy with its resolved members and the rules those members produce.

    The rule sets hold one rule per member, so a membership change patches them in
    O(members changed) Python work instead of rebuilding them.
    """

    policy: Policy
    src: frozenset[int]
    dst: frozenset[int]
    src_rules: frozenset[InboundRule] = _EMPTY  # what each source may open (to dst members)
    dst_rules: frozenset[InboundRule] = _EMPTY  # the reverse, bidirectional policies only
    fwd: dict[str, frozenset[ForwardRule]] = field(default_factory=dict)  # by route prefix

    def in_rule(self, ip: str) -> InboundRule:
        return InboundRule(ip, self.policy.protocol, self.policy.ports)

    def fwd_rule(self, ip: str, prefix: str) -> ForwardRule:
        return ForwardRule(ip, prefix, self.policy.protocol, self.policy.ports)

    def shift_src(self, gone: Iterable[str], came: Iterable[str]) -> None:
        """Sources with overlay IPs `gone` left and `came` joined: patch the rule sets."""
        gone, came = tuple(gone), tuple(came)
        self.src_rules = self.src_rules.difference(map(self.in_rule, gone)).union(
            map(self.in_rule, came))
        for prefix, rules in self.fwd.items():
            self.fwd[prefix] = rules.difference(
                self.fwd_rule(ip, prefix) for ip in gone).union(
                self.fwd_rule(ip, prefix) for ip in came)

    def shift_dst(self, gone: Iterable[str], came: Iterable[str]) -> None:
        if self.policy.bidirectional:
            self.dst_rules = self.dst_rules.difference(map(self.in_rule, gone)).union(
                map(self.in_rule, came))

    def fwd_rules(self, prefix: str, peers: Mapping[int, PeerInfo]) -> frozenset[ForwardRule]:
        rules = self.fwd.get(prefix)
        if rules is None:
            rules = frozenset(self.fwd_rule(peers[s].overlay_ip, prefix) for s in self.src)
            self.fwd[prefix] = rules
        return rules


@dataclass(frozen=True)
class _CompiledRoute:
    route: Route
    routers: frozenset[int]
    entry: RouteEntry  # every router, best first


class PolicyCompiler:
    """Compiled netmaps of a mesh, kept up to date change by change (see module docstring)."""

    def __init__(self, state: MeshState) -> None:
        _check_unique(state)
        self._peers: dict[int, PeerInfo] = dict(state.peers)
        self._all: frozenset[int] = frozenset(self._peers)
        self._raw: dict[str, frozenset[int]] = {
            g: frozenset(m) for g, m in state.groups.items() if g != ALL_GROUP}
        self._groups_of: dict[int, set[str]] = {}
        for g, m in self._raw.items():
            for pid in m:
                self._groups_of.setdefault(pid, set()).add(g)
        self._members: dict[str, frozenset[int]] = {
            g: m & self._all for g, m in self._raw.items()}
        self._members[ALL_GROUP] = self._all
        self._np: dict[int, NetmapPeer] = {pid: _netmap_peer(p) for pid, p in self._peers.items()}

        self._policies: dict[str, Policy] = {}
        self._cpol: dict[str, _CompiledPolicy] = {}
        self._by_src: dict[str, set[str]] = {}
        self._by_dst: dict[str, set[str]] = {}
        self._by_route: dict[str, set[str]] = {}
        self._routes: dict[str, Route] = {}
        self._croutes: dict[str, _CompiledRoute] = {}
        self._routes_by_group: dict[str, set[str]] = {}
        for r in state.routes:
            self._index_route(r)
        for p in state.policies:
            self._index_policy(p)

        self._netmaps: dict[int, Netmap] = {}
        self._knows: dict[int, frozenset[int]] = {}
        for pid in self._peers:
            self._netmaps[pid], self._knows[pid] = self._compile(pid)

    # --- reading -------------------------------------------------------------------------

    @property
    def netmaps(self) -> Mapping[int, Netmap]:
        """Every peer's current netmap (a read-only live view; version 0)."""
        return MappingProxyType(self._netmaps)

    def netmap(self, peer_id: int) -> Netmap:
        return self._netmaps[peer_id]

    def state(self) -> MeshState:
        """A snapshot of the mesh as the compiler holds it (`all` is listed explicitly)."""
        groups = dict(self._raw)
        groups[ALL_GROUP] = self._all
        return MeshState(peers=dict(self._peers), groups=groups,
                         policies=tuple(self._policies.values()),
                         routes=tuple(self._routes.values()))

    # --- changes ---------------------------------------------------------------------------

    def update(self, new: MeshState) -> set[int]:
        """Move to snapshot `new`; returns the ids of peers whose netmap changed or vanished.

        The diff compares objects (identity first, so a snapshot built from the previous one
        by `dataclasses.replace` is diffed fastest); recompilation touches only the peers the
        differences can affect.
        """
        _check_unique(new)
        todo: set[int] = set()
        old_peers, new_peers = self._peers, new.peers
        for pid in old_peers.keys() - new_peers.keys():
            todo |= self._remove_peer(pid)
        new_raw = {g: m for g, m in new.groups.items() if g != ALL_GROUP}
        for g in self._raw.keys() - new_raw.keys():
            todo |= self._set_group(g, None)
        for g, m in new_raw.items():
            old = self._raw.get(g)
            if old is None or (old is not m and old != m):
                todo |= self._set_group(g, frozenset(m))
        for pid, p in new_peers.items():
            old_p = old_peers.get(pid)
            if old_p is None or (old_p is not p and old_p != p):
                todo |= self._upsert_peer(p)
        new_routes = {r.name: r for r in new.routes}
        for name in self._routes.keys() - new_routes.keys():
            todo |= self._set_route(name, None)
        for name, r in new_routes.items():
            old_r = self._routes.get(name)
            if old_r is None or (old_r is not r and old_r != r):
                todo |= self._set_route(name, r)
        new_pols = {p.name: p for p in new.policies}
        for name in self._policies.keys() - new_pols.keys():
            todo |= self._set_policy(name, None)
        for name, p in new_pols.items():
            old_pol = self._policies.get(name)
            if old_pol is None or (old_pol is not p and old_pol != p):
                todo |= self._set_policy(name, p)
        # Keep the snapshot's policy and route order (it is what `state()` gives back).
        self._policies = new_pols
        self._routes = new_routes
        return self._recompute(todo)

    def upsert_peer(self, peer: PeerInfo) -> set[int]:
        """Add a peer or change its name, key, overlay IP or endpoints."""
        return self._recompute(self._upsert_peer(peer))

    def remove_peer(self, peer_id: int) -> set[int]:
        """Remove a peer (its group memberships stay, as dangling ids that count for nothing)."""
        if peer_id not in self._peers:
            raise KeyError(f"no peer with id {peer_id}")
        return self._recompute(self._remove_peer(peer_id))

    def set_group(self, name: str, members: Iterable[int]) -> set[int]:
        """Create a group or replace its members."""
        if name == ALL_GROUP:
            raise ValueError(f"group {ALL_GROUP!r} is built in and always holds every peer")
        return self._recompute(self._set_group(name, frozenset(members)))

    def remove_group(self, name: str) -> set[int]:
        """Delete a group; policies naming it then match nobody through it."""
        if name not in self._raw:
            raise KeyError(f"no group named {name!r}")
        return self._recompute(self._set_group(name, None))

    def upsert_policy(self, policy: Policy) -> set[int]:
        """Add a policy or replace the one with the same name."""
        return self._recompute(self._set_policy(policy.name, policy))

    def remove_policy(self, name: str) -> set[int]:
        if name not in self._policies:
            raise KeyError(f"no policy named {name!r}")
        return self._recompute(self._set_policy(name, None))

    def upsert_route(self, route: Route) -> set[int]:
        """Add a route or replace the one with the same name."""
        return self._recompute(self._set_route(route.name, route))

    def remove_route(self, name: str) -> set[int]:
        if name not in self._routes:
            raise KeyError(f"no route named {name!r}")
        return self._recompute(self._set_route(name, None))

    # --- change internals: each mutates the indexes and returns the peers to recompile -----

    def _upsert_peer(self, p: PeerInfo) -> set[int]:
        old = self._peers.get(p.id)
        if old is None:
            self._peers[p.id] = p
            self._np[p.id] = _netmap_peer(p)
            self._all = self._all | {p.id}
            todo = {p.id}
            for g in (*self._groups_of.get(p.id, ()), ALL_GROUP):
                todo |= self._refresh_group(g)
            return todo
        todo = {p.id} | self._knows.get(p.id, _EMPTY)
        groups = (*self._groups_of.get(p.id, ()), ALL_GROUP)
        if old.overlay_ip != p.overlay_ip:
            for g in groups:
                for name in self._by_src.get(g, ()):
                    cp = self._cpol[name]
                    if p.id in cp.src:
                        cp.shift_src((old.overlay_ip,), (p.overlay_ip,))
                for name in self._by_dst.get(g, ()):
                    cp = self._cpol[name]
                    if p.id in cp.dst:
                        cp.shift_dst((old.overlay_ip,), (p.overlay_ip,))
        # Names order routers and key metric overrides; keys identify them in route entries.
        for g in groups:
            for rname in self._routes_by_group.get(g, ()):
                self._croutes.pop(rname, None)
        self._peers[p.id] = p
        self._np[p.id] = _netmap_peer(p)
        return todo

    def _remove_peer(self, pid: int) -> set[int]:
        todo = {pid} | self._knows.get(pid, _EMPTY)
        gone = self._peers[pid]
        # Membership first, while the peer's IP is still known to patch the rule sets.
        self._all = self._all - {pid}
        for g in (*self._groups_of.get(pid, ()), ALL_GROUP):
            self._refresh_group(g, gone={pid: gone.overlay_ip})
        del self._peers[pid]
        del self._np[pid]
        return todo

    def _set_group(self, g: str, members: frozenset[int] | None) -> set[int]:
        """Replace group `g`'s members; None deletes the group."""
        old = self._raw.get(g, _EMPTY)
        new = _EMPTY if members is None else members
        for pid in old - new:
            self._groups_of[pid].discard(g)
        for pid in new - old:
            self._groups_of.setdefault(pid, set()).add(g)
        if members is None:
            self._raw.pop(g, None)
        else:
            self._raw[g] = members
        old_eff = self._members.get(g, _EMPTY)
        todo = (old_eff ^ (new & self._all)) | self._refresh_group(g)
        if members is None:
            del self._members[g]
        return todo

    def _refresh_group(self, g: str, gone: Mapping[int, str] | None = None) -> set[int]:
        """Recompute group `g`'s members and patch what depends on them.

        `gone` gives the overlay IPs of peers being removed (no longer in `_peers`' future).
        Returns the peers whose netmap may depend on membership of `g` (its counterparts).
        """
        members = self._all if g == ALL_GROUP else self._raw.get(g, _EMPTY) & self._all
        self._members[g] = members
        ip_of = self._ip_lookup(gone)
        for name in self._by_src.get(g, ()):
            cp = self._cpol[name]
            new_src = self._union(cp.policy.sources)
            if new_src != cp.src:
                cp.shift_src(map(ip_of, cp.src - new_src), map(ip_of, new_src - cp.src))
                cp.src = new_src
        for name in self._by_dst.get(g, ()):
            cp = self._cpol[name]
            new_dst = self._union(cp.policy.destinations)
            if new_dst != cp.dst:
                cp.shift_dst(map(ip_of, cp.dst - new_dst), map(ip_of, new_dst - cp.dst))
                cp.dst = new_dst
        for rname in self._routes_by_group.get(g, ()):
            self._croutes.pop(rname, None)
        return self._counterparts(g)

    def _ip_lookup(self, gone: Mapping[int, str] | None):
        peers = self._peers
        if not gone:
            return lambda pid: peers[pid].overlay_ip
        return lambda pid: gone[pid] if pid in gone else peers[pid].overlay_ip

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
        self._unindex_route(name)
        if r is not None:
            self._index_route(r)
        for pname in self._by_route.get(name, ()):
            self._cpol[pname].fwd.clear()
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

    def _union(self, groups: Iterable[str]) -> frozenset[int]:
        return _EMPTY.union(*(self._members.get(g, _EMPTY) for g in groups))

    def _index_policy(self, p: Policy) -> None:
        self._policies[p.name] = p
        if not p.enabled:
            return
        cp = _CompiledPolicy(p, self._union(p.sources), self._union(p.destinations))
        cp.src_rules = frozenset(cp.in_rule(self._peers[s].overlay_ip) for s in cp.src)
        if p.bidirectional:
            cp.dst_rules = frozenset(cp.in_rule(self._peers[d].overlay_ip) for d in cp.dst)
        self._cpol[p.name] = cp
        for g in set(p.sources):
            self._by_src.setdefault(g, set()).add(p.name)
        for g in set(p.destinations):
            self._by_dst.setdefault(g, set()).add(p.name)
        for r in set(p.destination_routes):
            self._by_route.setdefault(r, set()).add(p.name)

    def _unindex_policy(self, name: str) -> None:
        self._policies.pop(name, None)
        cp = self._cpol.pop(name, None)
        if cp is None:
            return
        for index, keys in ((self._by_src, cp.policy.sources),
                            (self._by_dst, cp.policy.destinations),
                            (self._by_route, cp.policy.destination_routes)):
            for k in set(keys):
                names = index[k]
                names.discard(name)
                if not names:
                    del index[k]

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
        routers = self._members.get(r.router_group, _EMPTY)
        overrides = dict(r.router_metrics)
        ranked = sorted(
            (overrides.get(self._peers[pid].name, r.metric), self._peers[pid].name, pid)
            for pid in routers
        )
        entry = RouteEntry(r.name, r.prefix,
                           tuple((self._peers[pid].public_key, m) for m, _, pid in ranked))
        cr = _CompiledRoute(r, routers, entry)
        self._croutes[name] = cr
        return cr

    # --- compiling one peer ------------------------------------------------------------------

    def _compile(self, x: int) -> tuple[Netmap, frozenset[int]]:
        me = self._peers[x]
        ip = me.overlay_ip
        groups = (*self._groups_of.get(x, ()), ALL_GROUP)
        as_src: set[str] = set()
        as_dst: set[str] = set()
        for g in groups:
            as_src.update(self._by_src.get(g, ()))
            as_dst.update(self._by_dst.get(g, ()))

        inbound: list[frozenset[InboundRule]] = []
        own_rules: set[InboundRule] = set()
        knows: list[frozenset[int]] = []
        routes: dict[str, RouteEntry] = {}
        for name in as_dst:
            cp = self._cpol[name]
            inbound.append(cp.src_rules)
            knows.append(cp.src)
            if x in cp.src:
                own_rules.add(cp.in_rule(ip))
        for name in as_src:
            cp = self._cpol[name]
            knows.append(cp.dst)
            if cp.policy.bidirectional:
                inbound.append(cp.dst_rules)
                if x in cp.dst:
                    own_rules.add(cp.in_rule(ip))
            for rname in cp.policy.destination_routes:
                cr = self._croute(rname)
                if cr is None or len(cr.routers) - (x in cr.routers) == 0:
                    continue  # no router other than x itself
                knows.append(cr.routers)
                routes[rname] = cr.entry if x not in cr.routers else RouteEntry(
                    cr.entry.name, cr.entry.prefix,
                    tuple(t for t in cr.entry.routers if t[0] != me.public_key))

        forward: list[frozenset[ForwardRule]] = []
        own_fwd: set[ForwardRule] = set()
        masq: set[str] = set()
        for g in groups:
            for rname in self._routes_by_group.get(g, ()):
                route = self._routes[rname]
                for name in self._by_route.get(rname, ()):
                    cp = self._cpol[name]
                    if len(cp.src) - (x in cp.src) == 0:
                        continue  # no source other than x itself
                    forward.append(cp.fwd_rules(route.prefix, self._peers))
                    knows.append(cp.src)
                    if x in cp.src:
                        own_fwd.add(cp.fwd_rule(ip, route.prefix))
                    if route.masquerade:
                        masq.add(route.prefix)

        known = _EMPTY.union(*knows) - {x}
        np = self._np
        netmap = Netmap(
            version=0,
            peer_id=x,
            name=me.name,
            overlay_ip=ip,
            peers={np[y].public_key: np[y] for y in known},
            inbound=_EMPTY.union(*inbound) - own_rules,
            routes=routes,
            forward=_EMPTY.union(*forward) - own_fwd,
            masquerade=frozenset(masq),
        )
        return netmap, known

    def _recompute(self, todo: Iterable[int]) -> set[int]:
        changed: set[int] = set()
        for x in todo:
            if x not in self._peers:
                if self._netmaps.pop(x, None) is not None:
                    changed.add(x)
                self._knows.pop(x, None)
                continue
            nm, known = self._compile(x)
            self._knows[x] = known
            if self._netmaps.get(x) != nm:
                self._netmaps[x] = nm
                changed.add(x)
        return changed


def _netmap_peer(p: PeerInfo) -> NetmapPeer:
    return NetmapPeer(p.public_key, p.name, p.overlay_ip, p.endpoints)


def _check_unique(state: MeshState) -> None:
    for kind, names in (("policy", [p.name for p in state.policies]),
                        ("route", [r.name for r in state.routes])):
        seen: set[str] = set()
        for n in names:
            if n in seen:
                raise ValueError(f"duplicate {kind} name {n!r}")
            seen.add(n)


def compile_netmaps(state: MeshState) -> dict[int, Netmap]:
    """Every peer's netmap (version 0; the caller stamps versions)."""
    return dict(PolicyCompiler(state).netmaps)
