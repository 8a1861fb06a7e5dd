"""A deliberately naive compiler written straight from the semantics in `wiremesh.core.policy`:
the oracle the fast, incremental compiler is checked against (tests only)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from wiremesh.core.models import MeshState
from wiremesh.core.wire import ForwardRule, InboundRule, Netmap, NetmapPeer, RouteEntry


def members(state: MeshState, groups: tuple[str, ...]) -> set[int]:
    out: set[int] = set()
    for g in groups:
        out |= set(state.peers) if g == "all" else set(state.groups.get(g, ()))
    return out & state.peers.keys()


def oracle_netmaps(state: MeshState) -> dict[int, Netmap]:
    # A JIT gateway is no peer here: in no group, given no netmap.
    state = dataclasses.replace(
        state, peers={pid: p for pid, p in state.peers.items() if not p.gateway})
    knows: dict[int, set[int]] = defaultdict(set)
    inbound: dict[int, set[InboundRule]] = defaultdict(set)
    forward: dict[int, set[ForwardRule]] = defaultdict(set)
    masq: dict[int, set[str]] = defaultdict(set)
    routes: dict[int, dict[str, RouteEntry]] = defaultdict(dict)
    by_name = {r.name: r for r in state.routes if r.enabled}
    ip = {pid: p.overlay_ip for pid, p in state.peers.items()}

    for p in state.policies:
        if not p.enabled:
            continue
        src, dst = members(state, p.sources), members(state, p.destinations)
        pairs = [(s, d) for s in src for d in dst]
        if p.bidirectional:
            pairs += [(d, s) for s in src for d in dst]
        for s, d in pairs:
            if s != d:
                inbound[d].add(InboundRule(ip[s], p.protocol, p.ports))
                knows[d].add(s)
                knows[s].add(d)
        for rname in p.destination_routes:
            route = by_name.get(rname)
            if route is None:
                continue
            over = dict(route.router_metrics)
            ranked = sorted(
                (over.get(state.peers[r].name, route.metric), state.peers[r].name, r)
                for r in members(state, (route.router_group,))
            )
            for s in src:
                usable = [(m, r) for m, _, r in ranked if r != s]
                if not usable:
                    continue
                routes[s][rname] = RouteEntry(
                    rname, route.prefix, tuple((state.peers[r].public_key, m) for m, r in usable))
                for _, r in usable:
                    knows[s].add(r)
                    knows[r].add(s)
                    forward[r].add(ForwardRule(ip[s], route.prefix, p.protocol, p.ports))
                    if route.masquerade:
                        masq[r].add(route.prefix)

    out = {}
    for pid, me in state.peers.items():
        peers = {}
        for o in knows[pid]:
            q = state.peers[o]
            peers[q.public_key] = NetmapPeer(q.public_key, q.name, q.overlay_ip, q.endpoints)
        out[pid] = Netmap(0, pid, me.name, me.overlay_ip, peers, frozenset(inbound[pid]),
                          dict(routes[pid]), frozenset(forward[pid]), frozenset(masq[pid]))
    return out


def test_oracle_on_a_hand_worked_mesh() -> None:
    from wiremesh.core.models import PeerInfo, Policy

    peers = {i: PeerInfo(i, f"p{i}", f"k{i}", f"100.64.0.{i}") for i in (1, 2)}
    state = MeshState(peers, {"a": frozenset({1})}, (Policy("x", ("a",), ("all",), "icmp"),))
    nms = oracle_netmaps(state)
    assert nms[2].inbound == {InboundRule("100.64.0.1", "icmp")}
    assert nms[1].inbound == frozenset() and set(nms[1].peers) == {"k2"}
