"""Policy compiler: from peers, groups, policies and routes to each peer's netmap slice.

Default deny: a peer learns about another peer only when some enabled policy lets one of them
open connections to the other, and its inbound rules list exactly what each source may open.
"""

from __future__ import annotations

from collections import defaultdict

from wiremesh.core.models import MeshState, Policy
from wiremesh.core.netmap import ForwardRule, InboundRule, Netmap, NetmapPeer, RouteEntry


def _members(state: MeshState, groups: tuple[str, ...]) -> set[int]:
    out: set[int] = set()
    for g in groups:
        out |= state.groups.get(g, frozenset())
    return out & state.peers.keys()


def _router_metrics(state: MeshState, route_name: str) -> list[tuple[int, int]]:
    route = next(r for r in state.routes if r.name == route_name)
    overrides = dict(route.router_metrics)
    routers = _members(state, (route.router_group,))
    return sorted(
        ((pid, overrides.get(state.peers[pid].name, route.metric)) for pid in routers),
        key=lambda x: (x[1], state.peers[x[0]].name),
    )


def compile_netmaps(state: MeshState) -> dict[int, Netmap]:
    """Every peer's netmap (version 0; the caller stamps versions)."""
    knows: dict[int, set[int]] = defaultdict(set)
    inbound: dict[int, set[InboundRule]] = defaultdict(set)
    forward: dict[int, set[ForwardRule]] = defaultdict(set)
    masq: dict[int, set[str]] = defaultdict(set)
    routes: dict[int, dict[str, RouteEntry]] = defaultdict(dict)
    routes_by_name = {r.name: r for r in state.routes if r.enabled}

    def allow(p: Policy, src: set[int], dst: set[int]) -> None:
        for d in dst:
            for s in src:
                if s == d:
                    continue
                inbound[d].add(InboundRule(state.peers[s].overlay_ip, p.protocol, p.ports))
                knows[d].add(s)
                knows[s].add(d)

    for p in state.policies:
        if not p.enabled:
            continue
        src = _members(state, p.sources)
        dst = _members(state, p.destinations)
        allow(p, src, dst)
        if p.bidirectional:
            allow(p, dst, src)
        for rname in p.destination_routes:
            route = routes_by_name.get(rname)
            if route is None:
                continue
            routers = _router_metrics(state, rname)
            if not routers:
                continue
            entry = RouteEntry(
                route.name, route.prefix,
                tuple((state.peers[pid].public_key, m) for pid, m in routers),
            )
            for s in src:
                usable = [pid for pid, _ in routers if pid != s]
                if not usable:
                    continue
                routes[s][route.name] = RouteEntry(
                    entry.name, entry.prefix,
                    tuple(x for x in entry.routers if x[0] != state.peers[s].public_key),
                )
                for pid in usable:
                    knows[s].add(pid)
                    knows[pid].add(s)
                    forward[pid].add(
                        ForwardRule(state.peers[s].overlay_ip, route.prefix, p.protocol, p.ports)
                    )
                    if route.masquerade:
                        masq[pid].add(route.prefix)

    out: dict[int, Netmap] = {}
    for pid, me in state.peers.items():
        peers = {}
        for other in knows.get(pid, ()):
            o = state.peers[other]
            peers[o.public_key] = NetmapPeer(o.public_key, o.name, o.overlay_ip, o.endpoints)
        out[pid] = Netmap(
            version=0,
            peer_id=pid,
            name=me.name,
            overlay_ip=me.overlay_ip,
            peers=peers,
            inbound=frozenset(inbound.get(pid, ())),
            routes=dict(routes.get(pid, {})),
            forward=frozenset(forward.get(pid, ())),
            masquerade=frozenset(masq.get(pid, ())),
        )
    return out
