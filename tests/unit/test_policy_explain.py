"""explain() and matrix() agree with what the compiler enforces, and give the right reasons."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy_compiler import mesh, states

from wiremesh.core.explain import explain, matrix, normalise_access
from wiremesh.core.models import Policy, PortRange
from wiremesh.core.policy import compile_netmaps
from wiremesh.core.wire import InboundRule


def enforced(rules: frozenset[InboundRule], src_ip: str, proto: str, port: int | None) -> bool:
    """What the nftables ruleset does with these inbound rules (`all`: any protocol)."""
    if proto == "all":
        asks = ("tcp", "udp") if port is not None else ("tcp", "udp", "icmp")
        return any(enforced(rules, src_ip, p, port) for p in asks)
    return any(
        r.src == src_ip and (r.proto == "all" or (r.proto == proto and (
            proto == "icmp" or port is None or not r.ports
            or any(x.contains(port) for x in r.ports))))
        for r in rules)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_explain_agrees_with_the_compiled_netmaps(data) -> None:
    state = data.draw(states())
    if len(state.peers) < 2:
        return
    nms = compile_netmaps(state)
    a, b = data.draw(st.lists(st.sampled_from(sorted(state.peers)), min_size=2, max_size=2,
                              unique=True))
    proto = data.draw(st.sampled_from(("all", "tcp", "udp", "icmp")))
    port = None if proto == "icmp" else data.draw(st.one_of(st.none(), st.integers(1, 120)))
    ex = explain(state, a, b, proto, port)
    assert ex.allowed == enforced(nms[b].inbound, state.peers[a].overlay_ip, proto, port)
    assert len(ex.verdicts) == len(state.policies)


@settings(max_examples=100, deadline=None)
@given(states())
def test_matrix_lists_exactly_the_pairs_with_inbound_rules(state) -> None:
    nms = compile_netmaps(state)
    m = matrix(state, nms)
    ip = {pid: p.overlay_ip for pid, p in state.peers.items()}
    for (a, b), access in m.items():
        assert access and any(r.src == ip[a] for r in nms[b].inbound)
    assert len(m) == sum(len({r.src for r in nm.inbound}) for nm in nms.values())


SSH = Policy("ssh", ("devs",), ("servers",), "tcp", (PortRange(22, 22), PortRange(8000, 8100)))


def test_allowed_names_the_policy() -> None:
    ex = explain(mesh(2, {"devs": {1}, "servers": {2}}, [SSH]), "p1", "p2", "tcp", 8080)
    assert ex.allowed and ex.allowed_by == ("ssh",)
    assert ex.summary() == "p1 -> p2 tcp/8080: allowed by ssh"


def test_peers_are_named_by_id_as_text_too() -> None:
    # The API's query parameters are text: "name or id" held for names only.
    state = mesh(2, {"devs": {1}, "servers": {2}}, [SSH])
    assert explain(state, "1", "2", "tcp", 22).summary() == "p1 -> p2 tcp/22: allowed by ssh"
    with pytest.raises(ValueError, match="no peer named '7'"):
        explain(state, "7", "p2", "tcp", 22)


@pytest.mark.parametrize(("src", "dst", "proto", "port", "verdict", "text"), [
    ("p3", "p2", "tcp", 22, "source", "p3 is in none of its source groups [devs]"),
    ("p1", "p3", "tcp", 22, "destination", "p3 is in none of its destination groups [servers]"),
    ("p1", "p2", "udp", 22, "proto", "it allows tcp, not udp"),
    ("p1", "p2", "tcp", 23, "port", "port 23 is outside tcp 22,8000-8100"),
    ("p2", "p1", "tcp", 22, "source", "p2 is in none of its source groups [devs]"),
])
def test_denials_say_why(src, dst, proto, port, verdict, text) -> None:
    ex = explain(mesh(3, {"devs": {1}, "servers": {2}}, [SSH]), src, dst, proto, port)
    assert not ex.allowed
    assert (ex.verdicts[0].verdict, ex.verdicts[0].reason) == (verdict, text)
    assert text in ex.summary()


def test_disabled_policy_and_empty_policy_set() -> None:
    off = Policy("off", ("all",), ("all",), enabled=False)
    ex = explain(mesh(2, policies=[off]), 1, 2, "icmp")
    assert ex.verdicts[0].verdict == "disabled" and not ex.allowed
    assert "no policies" in explain(mesh(2), 1, 2, "icmp").summary()


def test_bidirectional_policy_allows_the_reverse() -> None:
    p = Policy("both", ("devs",), ("servers",), "udp", bidirectional=True)
    assert explain(mesh(2, {"devs": {1}, "servers": {2}}, [p]), 2, 1, "udp", 53).allowed


def test_bad_questions_are_refused() -> None:
    state = mesh(2)
    with pytest.raises(ValueError, match="no peer named 'nobody'"):
        explain(state, "nobody", 1, "tcp", 22)
    with pytest.raises(ValueError, match="same peer"):
        explain(state, 1, 1, "tcp", 22)
    with pytest.raises(ValueError, match="proto"):
        explain(state, 1, 2, "gre", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        explain(state, 1, 2, "icmp", 5)


def test_explain_without_a_protocol_asks_for_any() -> None:
    state = mesh(3, {"devs": {1}, "servers": {2}}, [SSH])
    ex = explain(state, "p1", "p2")
    assert ex.allowed and ex.allowed_by == ("ssh",) and ex.proto == "all"
    assert explain(state, "p1", "p2", port=8080).allowed
    assert not explain(state, "p1", "p2", port=80).allowed
    assert not explain(state, "p2", "p1").allowed
    ping = Policy("ping", ("devs",), ("servers",), "icmp")
    assert explain(mesh(2, {"devs": {1}, "servers": {2}}, [ping]), 1, 2).allowed
    assert explain(mesh(2, {"devs": {1}, "servers": {2}}, [ping]), 1, 2,
                   port=22).verdicts[0].verdict == "proto"


def test_normalise_access_merges_and_subsumes() -> None:
    assert normalise_access([("tcp", (PortRange(22, 22),)), ("tcp", (PortRange(23, 30),)),
                             ("udp", ()), ("udp", (PortRange(53, 53),))]) == (
        ("tcp", (PortRange(22, 30),)), ("udp", ()))
    assert normalise_access([("tcp", ()), ("all", ())]) == (("all", ()),)
