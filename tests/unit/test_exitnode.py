"""Exit nodes (pure): policy decides who gets an exit route, the client's choice picks the
routes it works on, and what must stay outside the tunnel never goes into it."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from wiremesh.agent.prefs import Prefs
from wiremesh.core.exitnode import EXIT_PREFIX, bypass, chosen_routes, exit_nodes, is_exit
from wiremesh.core.explain import explain
from wiremesh.core.models import MeshState, PeerInfo, Policy, Route
from wiremesh.core.policy import compile_netmaps
from wiremesh.core.wire import ForwardRule, Netmap, NetmapPeer, RouteEntry
from wiremesh.firewall.render import render


def key(i: int) -> str:
    return base64.b64encode(bytes([i]) * 32).decode()


PEERS = {1: PeerInfo(1, "c1", key(1), "100.64.0.1", ("192.0.2.11:51820",)),
         2: PeerInfo(2, "e1", key(2), "100.64.0.2", ("192.0.2.12:51820", "203.0.113.2:51820")),
         3: PeerInfo(3, "e2", key(3), "100.64.0.3", ("[fd00::3]:51820",)),
         4: PeerInfo(4, "r1", key(4), "100.64.0.4", ("198.51.100.4:51820",)),
         5: PeerInfo(5, "c2", key(5), "100.64.0.5")}
STATE = MeshState(
    PEERS,
    {"exits": frozenset({2, 3}), "routers": frozenset({4}), "users": frozenset({1}),
     "others": frozenset({5})},
    (Policy("browse", ("users",), (), destination_routes=("internet", "lan")),
     Policy("others-lan", ("others",), (), destination_routes=("lan",))),
    (Route("internet", EXIT_PREFIX, "exits", router_metrics=(("e1", 10), ("e2", 20))),
     Route("lan", "198.18.1.0/24", "routers")),
)


def netmap(pid: int) -> Netmap:
    return compile_netmaps(STATE)[pid]


def test_policy_decides_who_gets_an_exit_route() -> None:
    c1, c2 = netmap(1), netmap(5)
    assert exit_nodes(c1) == {key(2): "e1", key(3): "e2"}
    assert c1.routes["internet"].routers == ((key(2), 10), (key(3), 20))
    assert exit_nodes(c2) == {}  # c2 may use the LAN route, not the internet one
    assert set(c2.routes) == {"lan"}
    # The exit nodes forward (and masquerade) only for the users.
    e1 = netmap(2)
    assert ForwardRule("100.64.0.1", EXIT_PREFIX, "all") in e1.forward
    assert {r.src for r in e1.forward} == {"100.64.0.1"}
    assert e1.masquerade == frozenset({EXIT_PREFIX})


def test_an_exit_node_never_forwards_into_the_overlay() -> None:
    text = render(netmap(2), "wm0")
    forward = text[text.index("chain mesh_forward"):]
    drop = forward.index("ip daddr 100.64.0.0/10 counter drop")
    assert drop < forward.index("@fwd_any accept")


@pytest.mark.parametrize("choice,expect", [
    (None, {"lan": ((key(4), 100),)}),
    ("auto", {"lan": ((key(4), 100),), "internet": ((key(2), 10), (key(3), 20))}),
    ("e2", {"lan": ((key(4), 100),), "internet": ((key(3), 20),)}),
    ("r1", {"lan": ((key(4), 100),)}),  # not an exit node
    ("nobody", {"lan": ((key(4), 100),)}),
])
def test_the_client_choice_picks_the_routes(choice: str | None,
                                            expect: dict[str, tuple]) -> None:
    got = {r.name: r.routers for r in chosen_routes(netmap(1), choice)}
    assert got == expect


def test_server_relays_and_peer_endpoints_stay_outside() -> None:
    c1 = netmap(1)
    out = bypass(c1, ["192.0.2.1", "198.51.100.9", "fd00::1"])
    assert out == ["192.0.2.1/32", "192.0.2.12/32", "198.51.100.4/32", "198.51.100.9/32",
                   "203.0.113.2/32",
                   # IPv6: the server and e2's endpoint, and what never leaves the link.
                   "fd00::1/128", "fd00::3/128", "fe80::/10", "ff00::/8"]
    # The local networks (both families) only when asked.
    assert "192.0.2.0/24" not in out
    lan = bypass(c1, ["192.0.2.1"], ["192.0.2.0/24", "fd00:1::/64"], allow_lan=True)
    assert "192.0.2.0/24" in lan and "fd00:1::/64" in lan
    assert "::/0" not in bypass(c1, ["::"], ["::/0"], allow_lan=True)


def test_nothing_of_the_mesh_is_ever_bypassed() -> None:
    # A peer claiming an endpoint inside the overlay or a routed prefix, or a LAN overlapping
    # them, would pull mesh traffic out of the tunnel: refused.
    c1 = netmap(1)
    evil = dataclasses.replace(c1, peers={**c1.peers, key(9): NetmapPeer(
        key(9), "x", "100.64.0.9", ("100.64.0.2:51820", "198.18.1.7:1", "0.0.0.0:5"))})
    out = bypass(evil, ["100.64.0.3"], ["198.18.0.0/16", "0.0.0.0/0"], allow_lan=True)
    assert not any(p.startswith(("100.", "198.18.", "0.0.0.0")) for p in out)


def test_exit_routes_are_recognised_by_prefix() -> None:
    assert is_exit(RouteEntry("x", "0.0.0.0/0", ()))
    assert not is_exit(RouteEntry("x", "0.0.0.0/1", ()))


def test_prefs_refuse_a_bad_exit_node_name() -> None:
    with pytest.raises(ValueError, match="bad name"):
        Prefs(exit_node="not a name")
    assert Prefs(exit_node="auto").exit_node == "auto"


def test_explain_shows_who_may_use_which_exit_node() -> None:
    ex = explain(STATE, "c1", "203.0.113.10", "tcp", 443)
    assert ex.allowed and ex.allowed_by == ("browse",)
    why = {v.policy: v for v in ex.verdicts}
    assert "through route internet (0.0.0.0/0, routers e1, e2)" in why["browse"].reason
    assert "--exit-node" in why["browse"].reason
    assert why["others-lan"].verdict == "destination"
    denied = explain(STATE, "c2", "203.0.113.10")
    assert not denied.allowed
    assert {v.policy: v.verdict for v in denied.verdicts} == {"browse": "source",
                                                              "others-lan": "destination"}
    assert "c2 -> 203.0.113.10" in denied.summary()
    # Inside a more specific route that route carries it, not the exit node.
    lan = explain(STATE, "c2", "198.18.1.5", "udp", 53)
    assert lan.allowed_by == ("others-lan",)
    assert "route lan" in lan.verdicts[1].reason and "exit" not in lan.verdicts[1].reason
    with pytest.raises(ValueError, match="overlay address"):
        explain(STATE, "c1", "100.64.0.2")
