"""The policy compiler: full compile against a naive oracle, incremental == full, and the
safety properties (nothing outside a policy's groups/proto/ports; removal never adds)."""

from __future__ import annotations

import dataclasses
import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy_oracle import members, oracle_netmaps

from wiremesh.core.models import (
    PROTOS,
    MeshChange,
    MeshState,
    PeerInfo,
    Policy,
    PortRange,
    Route,
)
from wiremesh.core.policy import PolicyCompiler, compile_netmaps
from wiremesh.core.posture import Posture, compiled, passing, source_group
from wiremesh.core.wire import ForwardRule, InboundRule, Netmap, RouteEntry

GROUPS = ("g0", "g1", "g2", "g3")
NEW_AGENTS = Posture(min_agent_version="0.2.0")
VERSIONS = ("", "0.1.0", "0.3.0")  # as agents report them: none, too old, new enough
ROUTES = ("r0", "r1")


def peer(i: int, endpoint: str = "", name: str | None = None, ip: int | None = None,
         agent_version: str = "") -> PeerInfo:
    return PeerInfo(i, name or f"p{i}", f"key{i}", f"100.64.0.{ip or i}",
                    (endpoint,) if endpoint else (), agent_version=agent_version)


def mesh(n: int, groups: dict[str, set[int]] | None = None, policies=(), routes=()) -> MeshState:
    return MeshState({i: peer(i) for i in range(1, n + 1)},
                     {g: frozenset(m) for g, m in (groups or {}).items()},
                     tuple(policies), tuple(routes))


# --- strategies ---------------------------------------------------------------------------

peer_ids = st.integers(1, 9)
ports = st.lists(st.builds(lambda a, b: PortRange(min(a, b), max(a, b)),
                           st.integers(1, 100), st.integers(1, 100)), max_size=2).map(tuple)


@st.composite
def policies(draw, name: str) -> Policy:
    proto = draw(st.sampled_from(PROTOS))
    return Policy(
        name=name,
        sources=tuple(draw(st.lists(st.sampled_from((*GROUPS, "all", "ghost")), min_size=1,
                                    max_size=2))),
        destinations=tuple(draw(st.lists(st.sampled_from((*GROUPS, "all")), max_size=2))),
        protocol=proto,
        ports=draw(ports) if proto in ("tcp", "udp") else (),
        bidirectional=draw(st.booleans()),
        enabled=draw(st.booleans().map(lambda b: b or draw(st.booleans()))),
        destination_routes=tuple(draw(st.lists(st.sampled_from((*ROUTES, "nowhere")),
                                               max_size=2, unique=True))),
        posture=draw(st.sampled_from((None, None, NEW_AGENTS))),
    )


@st.composite
def routes(draw, name: str) -> Route:
    return Route(name, f"198.18.{ROUTES.index(name)}.0/24",
                 draw(st.sampled_from((*GROUPS, "all"))), draw(st.sampled_from((10, 100))),
                 draw(st.sampled_from(((), (("p1", 5),), (("p2", 200),)))),
                 draw(st.booleans()), draw(st.booleans()))


@st.composite
def states(draw) -> MeshState:
    ids = draw(st.sets(peer_ids, max_size=8))
    versions = {i: draw(st.sampled_from(VERSIONS)) for i in ids}
    groups = {g: frozenset(draw(st.sets(st.integers(1, 10), max_size=5)))
              for g in draw(st.sets(st.sampled_from(GROUPS)))}
    pols = tuple(draw(policies(f"pol{i}")) for i in range(draw(st.integers(0, 5))))
    rts = tuple(draw(routes(r)) for r in draw(st.sets(st.sampled_from(ROUTES))))
    return MeshState({i: peer(i, agent_version=versions[i]) for i in ids}, groups, pols, rts)


@st.composite
def change(draw, state: MeshState) -> tuple[str, object, MeshState]:
    """One fine-grained change: (method name, argument, resulting state)."""
    kind = draw(st.sampled_from(("peer", "unpeer", "group", "ungroup", "policy", "unpolicy",
                                 "route", "unroute")))
    if kind == "peer":
        i = draw(peer_ids)
        p = peer(i, draw(st.sampled_from(("", "192.0.2.1:51820"))),
                 draw(st.sampled_from((None, "renamed", "p1"))), draw(st.sampled_from((None, 50))),
                 draw(st.sampled_from(VERSIONS)))
        if any(q.overlay_ip == p.overlay_ip for q in state.peers.values() if q.id != i):
            p = dataclasses.replace(p, overlay_ip=peer(i).overlay_ip)
        # Now and then a JIT gateway (no peer to the compiler), or a peer again.
        p = dataclasses.replace(p, gateway=draw(st.sampled_from((False, False, True))))
        return "upsert_peer", p, dataclasses.replace(state, peers={**state.peers, i: p})
    if kind == "unpeer" and state.peers:
        i = draw(st.sampled_from(sorted(state.peers)))
        return "remove_peer", i, dataclasses.replace(
            state, peers={k: v for k, v in state.peers.items() if k != i})
    if kind == "group":
        g, m = draw(st.sampled_from(GROUPS)), frozenset(draw(st.sets(st.integers(1, 10))))
        return "set_group", (g, m), dataclasses.replace(state, groups={**state.groups, g: m})
    if kind == "ungroup" and state.groups:
        g = draw(st.sampled_from(sorted(state.groups)))
        return "remove_group", g, dataclasses.replace(
            state, groups={k: v for k, v in state.groups.items() if k != g})
    if kind == "policy":
        p = draw(policies(f"pol{draw(st.integers(0, 6))}"))
        pols = [q for q in state.policies if q.name != p.name] + [p]
        return "upsert_policy", p, dataclasses.replace(state, policies=tuple(pols))
    if kind == "unpolicy" and state.policies:
        name = draw(st.sampled_from([p.name for p in state.policies]))
        return "remove_policy", name, dataclasses.replace(
            state, policies=tuple(p for p in state.policies if p.name != name))
    if kind == "route":
        r = draw(routes(draw(st.sampled_from(ROUTES))))
        rts = [q for q in state.routes if q.name != r.name] + [r]
        return "upsert_route", r, dataclasses.replace(state, routes=tuple(rts))
    if kind == "unroute" and state.routes:
        name = draw(st.sampled_from([r.name for r in state.routes]))
        return "remove_route", name, dataclasses.replace(
            state, routes=tuple(r for r in state.routes if r.name != name))
    return "update", state, state


@st.composite
def mesh_change(draw, state: MeshState) -> tuple[MeshChange, MeshState]:
    """Several fine-grained changes at once, as the change log hands a refresh them."""
    new = state
    for _ in range(draw(st.integers(1, 4))):
        new = draw(change(new))[2]
    return mesh_change_between(state, new), new


def mesh_change_between(old: MeshState, new: MeshState) -> MeshChange:
    """What the change log would tell a refresh moving from `old` to `new`."""
    def moved(a: dict, b: dict) -> dict:
        return {k: b.get(k) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}

    def named(xs: tuple) -> dict:
        return {x.name: x for x in xs}

    return MeshChange(moved(old.peers, new.peers), moved(old.groups, new.groups),
                      moved(named(old.policies), named(new.policies)),
                      moved(named(old.routes), named(new.routes)))


def reference(state: MeshState) -> dict[int, Netmap]:
    """The oracle's netmaps, each posture-checked policy's sources narrowed to the peers
    that pass (the oracle knows nothing of posture)."""
    groups = dict(state.groups)
    for p in state.policies:
        if p.posture is not None:
            groups[source_group(p.name)] = passing(
                p, [state.peers[i] for i in members(state, p.sources)])
    return oracle_netmaps(dataclasses.replace(
        state, groups=groups, policies=tuple(compiled(p) for p in state.policies)))


# --- the compiler against the oracle -------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(states())
def test_full_compile_matches_oracle(state: MeshState) -> None:
    assert compile_netmaps(state) == reference(state)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_incremental_equals_full(data) -> None:
    state = data.draw(states())
    fine, diffed = PolicyCompiler(state), PolicyCompiler(state)
    for _ in range(data.draw(st.integers(1, 8))):
        if data.draw(st.booleans()):
            method, arg, new = data.draw(change(state))
        else:
            arg, new = data.draw(mesh_change(state))
            method = "apply"
        before = dict(fine.netmaps)
        if method == "update":
            changed = fine.update(new)
        else:
            changed = getattr(fine, method)(*(arg if method == "set_group" else (arg,)))
        expected = reference(new)
        assert dict(fine.netmaps) == expected, method
        # The reported set is exactly the peers whose netmap differs (or vanished).
        assert changed == {k for k in before.keys() | expected.keys()
                           if before.get(k) != expected.get(k)}
        assert diffed.update(new) == changed
        assert dict(diffed.netmaps) == expected
        assert set(diffed.state().policies) == set(new.policies)
        assert fine.state() == diffed.state()
        state = new


@st.composite
def member_moves(draw, state: MeshState) -> MeshState:
    """A few peers join or leave a group, leave the mesh, come (back) or change endpoint:
    the everyday changes, which the compiler patches by the members that moved."""
    new = state
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("join", "leave", "unpeer", "peer", "endpoint")))
        i = draw(st.integers(1, 30))
        g = draw(st.sampled_from(GROUPS))
        m = new.groups.get(g, frozenset())
        if kind in ("join", "leave"):
            new = dataclasses.replace(new, groups={
                **new.groups, g: m | {i} if kind == "join" else m - {i}})
        elif kind == "unpeer":
            new = dataclasses.replace(
                new, peers={k: v for k, v in new.peers.items() if k != i})
        else:
            p = peer(i, "192.0.2.7:51820" if kind == "endpoint" else "")
            new = dataclasses.replace(new, peers={**new.peers, i: p})
    return new


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_member_moves_in_larger_groups_equal_full(data) -> None:
    """Groups large enough that a change is patched by its moved members (not merged again)."""
    state = MeshState(
        {i: peer(i) for i in range(1, 31)},
        {g: frozenset(data.draw(st.sets(st.integers(1, 30), min_size=4, max_size=16)))
         for g in GROUPS},
        tuple(data.draw(policies(f"pol{i}")) for i in range(data.draw(st.integers(1, 5)))),
        tuple(data.draw(routes(r)) for r in data.draw(st.sets(st.sampled_from(ROUTES)))))
    compiler = PolicyCompiler(state)
    for _ in range(data.draw(st.integers(1, 6))):
        new = data.draw(member_moves(state))
        before = dict(compiler.netmaps)
        changed = compiler.apply(mesh_change_between(state, new))
        expected = reference(new)
        assert dict(compiler.netmaps) == expected
        assert changed == {k for k in before.keys() | expected.keys()
                           if before.get(k) != expected.get(k)}
        state = new


# --- safety properties ---------------------------------------------------------------------


def _allows(rule: InboundRule, proto: str, port: int | None) -> bool:
    if rule.proto not in ("all", proto):
        return False
    return port is None or not rule.ports or any(r.contains(port) for r in rule.ports)


@settings(max_examples=200, deadline=None)
@given(states())
def test_every_rule_is_backed_by_a_policy(state: MeshState) -> None:
    """An inbound rule at d from s exists only if some enabled policy has s in its sources and
    d in its destinations (or the reverse when bidirectional) with that exact proto/ports."""
    ip_to_id = {p.overlay_ip: pid for pid, p in state.peers.items()}
    for d, nm in compile_netmaps(state).items():
        for rule in nm.inbound:
            s = ip_to_id[rule.src]
            assert s != d
            assert any(
                p.enabled and p.protocol == rule.proto and p.ports == rule.ports and (
                    (s in members(state, p.sources) and d in members(state, p.destinations))
                    or (p.bidirectional and d in members(state, p.sources)
                        and s in members(state, p.destinations)))
                for p in state.policies)
        for fr in nm.forward:
            s = ip_to_id[fr.src]
            assert any(p.enabled and s in members(state, p.sources) and p.protocol == fr.proto
                       for p in state.policies)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_removing_a_policy_never_adds_reachability(data) -> None:
    state = data.draw(states())
    if not state.policies:
        return
    victim = data.draw(st.sampled_from([p.name for p in state.policies]))
    c = PolicyCompiler(state)
    before = dict(c.netmaps)
    c.remove_policy(victim)
    for pid, nm in c.netmaps.items():
        old = before[pid]
        assert nm.inbound <= old.inbound
        assert nm.forward <= old.forward
        assert nm.peers.keys() <= old.peers.keys()
        assert nm.routes.keys() <= old.routes.keys()
        assert nm.masquerade <= old.masquerade


# --- worked examples -----------------------------------------------------------------------


def test_default_policy_connects_everyone() -> None:
    default = Policy(name="default", sources=("all",), destinations=("all",), protocol="all")
    nms = compile_netmaps(mesh(3, policies=[default]))
    assert set(nms[1].peers) == {"key2", "key3"}
    assert nms[1].inbound == {InboundRule("100.64.0.2", "all"), InboundRule("100.64.0.3", "all")}


def test_no_policy_means_nobody_knows_anybody() -> None:
    nms = compile_netmaps(mesh(3))
    assert all(not nm.peers and not nm.inbound for nm in nms.values())


def test_one_way_policy_opens_only_the_destination() -> None:
    ssh = Policy("ssh", ("devs",), ("servers",), "tcp", (PortRange(22, 22),))
    nms = compile_netmaps(mesh(3, {"devs": {1}, "servers": {2}}, [ssh]))
    assert nms[2].inbound == {InboundRule("100.64.0.1", "tcp", (PortRange(22, 22),))}
    assert nms[1].inbound == frozenset()
    assert set(nms[1].peers) == {"key2"} and set(nms[2].peers) == {"key1"}
    assert not nms[3].peers


def test_bidirectional_policy_opens_both_ways() -> None:
    p = Policy("chat", ("a",), ("b",), "udp", (PortRange(5000, 5010),), bidirectional=True)
    nms = compile_netmaps(mesh(2, {"a": {1}, "b": {2}}, [p]))
    assert nms[1].inbound == {InboundRule("100.64.0.2", "udp", (PortRange(5000, 5010),))}
    assert nms[2].inbound == {InboundRule("100.64.0.1", "udp", (PortRange(5000, 5010),))}


def test_route_gives_sources_entries_and_routers_forward_rules() -> None:
    route = Route("lab", "198.18.1.0/24", "routers", metric=100, router_metrics=(("p3", 50),))
    p = Policy("use-lab", ("devs",), (), "tcp", (PortRange(80, 80),), destination_routes=("lab",))
    nms = compile_netmaps(mesh(3, {"devs": {1}, "routers": {2, 3}}, [p], [route]))
    assert nms[1].routes == {"lab": RouteEntry("lab", "198.18.1.0/24",
                                               (("key3", 50), ("key2", 100)))}
    for r in (2, 3):
        assert nms[r].forward == {ForwardRule("100.64.0.1", "198.18.1.0/24", "tcp",
                                              (PortRange(80, 80),))}
        assert nms[r].masquerade == {"198.18.1.0/24"}
        assert "key1" in nms[r].peers
    assert set(nms[1].peers) == {"key2", "key3"}


def test_router_using_its_own_route_sees_only_the_other_routers() -> None:
    route = Route("lab", "198.18.1.0/24", "routers")
    p = Policy("use-lab", ("routers",), (), destination_routes=("lab",))
    nms = compile_netmaps(mesh(2, {"routers": {1, 2}}, [p], [route]))
    assert nms[1].routes["lab"].routers == (("key2", 100),)
    solo = compile_netmaps(mesh(1, {"routers": {1}}, [p], [route]))
    assert solo[1].routes == {} and solo[1].forward == frozenset()


def test_one_peer_joining_a_small_group_touches_only_its_counterparts() -> None:
    state = mesh(200, {f"t{i}": set(range(10 * i + 1, 10 * i + 11)) for i in range(20)},
                 [Policy(f"p{i}", (f"t{i}",), (f"t{(i + 1) % 20}",), "tcp") for i in range(20)])
    c = PolicyCompiler(state)
    changed = c.set_group("t0", set(range(1, 11)) | {150})
    # 150 itself, t1 (its new destinations) and t19 (whose destination t0 is)
    assert changed == {150} | set(range(11, 21)) | set(range(191, 201))
    assert dict(c.netmaps) == oracle_netmaps(c.state())


def test_re_upserting_an_unchanged_peer_keeps_its_later_edits_exact() -> None:
    """Found by hypothesis: a peer upserted twice unchanged, then given a new overlay IP,
    left its old IP's rules behind (in its own netmap and its counterparts')."""
    pol = Policy("pol0", ("g0",), ("g0",))
    c = PolicyCompiler(MeshState({2: peer(2)}, {"g0": frozenset({1, 2})}, (pol,), ()))
    c.upsert_peer(peer(1))  # joins g0, which named it before it existed
    assert c.upsert_peer(peer(1)) == set()
    assert c.upsert_peer(peer(1, ip=50)) == {1, 2}
    assert c.netmap(2).inbound == {InboundRule("100.64.0.50", "all")}
    assert c.netmap(1).inbound == {InboundRule("100.64.0.2", "all")}
    assert dict(c.netmaps) == oracle_netmaps(c.state())


def test_duplicate_names_are_refused() -> None:
    p = Policy("same", ("all",), ("all",))
    with pytest.raises(ValueError, match="duplicate policy name 'same'"):
        PolicyCompiler(mesh(1, policies=[p, p]))


def test_all_group_cannot_be_edited() -> None:
    with pytest.raises(ValueError, match="built in"):
        PolicyCompiler(mesh(1)).set_group("all", {1})


def test_an_entry_two_groups_give_stays_when_one_group_stops_giving_it() -> None:
    """Peer 3 is in x and y, which both hear from peer 1 (through a and b) with the same rule:
    when 1 leaves a, the patched combination {x, y} must keep 1 and the rule (y still gives
    them), while peer 4 (only in x) loses both."""
    pols = [Policy("ax", ("a",), ("x",), "tcp", (PortRange(22, 22),)),
            Policy("by", ("b",), ("y",), "tcp", (PortRange(22, 22),))]
    c = PolicyCompiler(mesh(4, {"a": {1}, "b": {1}, "x": {3, 4}, "y": {3}}, pols))
    rule = InboundRule("100.64.0.1", "tcp", (PortRange(22, 22),))
    assert c.set_group("a", set()) == {1, 4}
    assert c.netmap(3).inbound == {rule} and set(c.netmap(3).peers) == {"key1"}
    assert c.netmap(4).inbound == frozenset() and not c.netmap(4).peers
    assert c.set_group("a", {1}) == {1, 4}
    assert c.netmap(4).inbound == {rule}
    assert dict(c.netmaps) == oracle_netmaps(c.state())


def test_changes_run_without_the_cyclic_collector_and_freeze_what_they_made() -> None:
    default = Policy(name="default", sources=("all",), destinations=("all",), protocol="all")
    c = PolicyCompiler(mesh(20, policies=[default]))
    runs: list[str] = []

    def seen(phase: str, _info: dict) -> None:
        runs.append(phase)

    joining, members = peer(21), {1, 2}
    threshold = gc.get_threshold()
    gc.unfreeze()
    gc.callbacks.append(seen)
    gc.set_threshold(1)  # any container allocated would start a collection
    try:
        touched = c.upsert_peer(joining)
        c.set_group("g", members)
        enabled_after, frozen, made = gc.isenabled(), gc.get_freeze_count(), c.netmap(1)
        gc.disable()
        c.remove_peer(21)
        disabled_after = not gc.isenabled()
    finally:
        gc.enable()
        gc.set_threshold(*threshold)
        gc.callbacks.remove(seen)
    # Only the few each call starts before the collector is off (its arguments, the
    # context manager): over 300 without, as each change allocates hundreds of containers.
    assert runs.count("start") <= 10, runs
    assert enabled_after and disabled_after
    assert touched == set(range(1, 22))
    # What the change made is out of the collections' sight (in no generation).
    assert frozen > 0
    assert not any(o is made for o in gc.get_objects())
