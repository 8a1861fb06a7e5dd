"""The nftables renderer (pure): what goes into which set, and the shape of the script."""

from __future__ import annotations

import re

import pytest

from wiremesh.core.models import PortRange
from wiremesh.core.wire import ForwardRule, InboundRule, Netmap
from wiremesh.firewall.render import FlowTimeouts, RenderError, render


def nm(inbound=(), forward=(), masquerade=()) -> Netmap:
    return Netmap(version=7, peer_id=1, name="b", overlay_ip="100.64.0.2",
                  inbound=frozenset(inbound), forward=frozenset(forward),
                  masquerade=frozenset(masquerade))


def elements(script: str, set_name: str) -> list[str]:
    m = re.search(rf"\tset {set_name} {{\n(.*?)\n\t}}", script, re.S)
    assert m, f"set {set_name} missing"
    return [ln.strip().rstrip(",") for ln in m.group(1).splitlines()
            if ln.startswith("\t\t\t")]


def P(a: int, b: int | None = None) -> PortRange:
    return PortRange(a, a if b is None else b)


def final_table(script: str, family: str = "inet") -> str:
    """The `<family> wiremesh` table the script leaves behind (after the prelude that empties
    the old one)."""
    start = script.rindex(f"table {family} wiremesh {{")
    end = script.find("\n}\n", start)
    return script[start:end + 3]


def chain(script: str, name: str, family: str = "inet") -> list[str]:
    m = re.search(rf"\tchain {name} {{\n(.*?)\n\t}}", final_table(script, family), re.S)
    assert m, f"chain {name} missing"
    return [ln.strip() for ln in m.group(1).splitlines()]


BACK = "ip saddr . meta l4proto . th sport . th dport"


def reflexive_replies(tcp_edge: int) -> list[str]:
    """Replies on a peer that routes nothing: the reversed tuple, echo replies to our pings,
    errors quoting our packets (100.64.0.2 = 0x64400002)."""
    return [
        f"tcp flags & (fin | rst) != 0 {BACK} @flows update @flows {{ {BACK} timeout "
        f"{tcp_edge}s }} accept",
        f"{BACK} @flows accept",
        "icmp type echo-reply ip saddr . icmp id @pings accept",
        "icmp type { destination-unreachable, time-exceeded, parameter-problem } "
        "@th,64,8 0x45 @th,160,32 0x64400002 accept",
    ]


ALLOWED = [
    "ip saddr @in_any accept",
    "ip protocol icmp ip saddr @in_icmp accept",
    "ip saddr . tcp dport @in_tcp accept",
    "ip saddr . udp dport @in_udp accept",
    "ip saddr @probe_src udp dport 51999 accept",
    "counter drop",
]


def test_empty_netmap_drops_every_new_connection_from_the_mesh_only() -> None:
    s = render(nm(), "wg0")
    body = chain(s, "from_mesh", "netdev")
    assert body[0] == 'type filter hook ingress device "wg0" priority filter; policy accept;'
    assert body[-1] == "counter drop"
    assert '\t\tiifname "wg0" jump mesh_forward' in final_table(s)
    assert chain(s, "mesh_forward") == ["counter drop"]
    assert "policy accept" in s and "policy drop" not in s  # the underlay is not ours
    for family in ("inet", "netdev"):
        table = final_table(s, family)
        assert "postrouting" not in table and "elements" not in table
    # Nothing on the hooks every packet of the host crosses.
    assert "hook input" not in s and "hook output" not in s


def test_a_peer_that_routes_nothing_has_no_conntrack_and_records_what_it_opens() -> None:
    s = render(nm(inbound=[InboundRule("100.64.0.5", "tcp", (P(22),))]), "wg0",
               timeouts=FlowTimeouts(tcp=3600, tcp_edge=60, udp=30, ping=10))
    assert not re.search(r"\bct\b", s)  # any ct expression turns conntrack on for the netns
    key = "ip daddr . meta l4proto . th dport . th sport"
    assert chain(s, "to_mesh", "netdev") == [
        'type filter hook egress device "wg0" priority filter; policy accept;',
        f"tcp flags & (syn | fin | rst) == 0 update @flows {{ {key} timeout 3600s }} accept",
        "tcp flags & (syn | ack) == syn | ack accept",
        f"meta l4proto tcp update @flows {{ {key} timeout 60s }} accept",
        f"meta l4proto udp update @flows {{ {key} timeout 30s }} accept",
        "icmp type echo-request update @pings { ip daddr . icmp id timeout 10s }",
    ]
    # Fragments past the first (ingress is before reassembly), replies, then what policy
    # allows, then nothing.
    assert chain(s, "from_mesh", "netdev") == [
        'type filter hook ingress device "wg0" priority filter; policy accept;',
        "ip frag-off & 0x1fff != 0 accept",
        *reflexive_replies(60),
        *ALLOWED,
    ]
    assert elements(final_table(s, "netdev"), "in_tcp") == ["100.64.0.5 . 22"]


def test_without_device_hooks_the_acl_sits_on_input_and_output() -> None:
    s = render(nm(), "wg0", device_hooks=False)
    assert "delete table netdev wiremesh" in s.splitlines()
    assert chain(s, "output")[1] == 'oifname "wg0" jump to_mesh'
    assert chain(s, "input")[1] == 'iifname "wg0" jump from_mesh'
    assert chain(s, "from_mesh") == [*reflexive_replies(120), *ALLOWED]
    assert chain(s, "to_mesh")[0].startswith("tcp flags & (syn | fin | rst) == 0 update")
    assert not re.search(r"\bct\b", s)


def test_routers_keep_conntrack_for_forwarding_and_nat() -> None:
    s = render(nm(forward=[ForwardRule("100.64.0.5", "198.18.0.0/16", "all")],
                  masquerade=["198.18.0.0/16"]), "wg0")
    for name in ("from_mesh", "mesh_forward"):
        assert chain(s, name)[:2] == ["ct state established,related accept",
                                      "ct state invalid drop"]
    assert "chain output" not in final_table(s)
    # A client turned router leaves its device hooks behind.
    assert "delete table netdev wiremesh" in s.splitlines()


@pytest.mark.parametrize(("netmap", "device_hooks", "family", "chains"), [
    (nm(), True, "netdev", ("from_mesh", "to_mesh")),
    (nm(), False, "inet", ("postrouting", "mss_clamp", "mesh_forward", "output", "to_mesh")),
    (nm(masquerade=["198.18.0.0/16"]), True, "inet", ("postrouting", "output", "to_mesh")),
])
def test_a_reload_keeps_the_flows_and_removes_everything_else(
        netmap: Netmap, device_hooks: bool, family: str, chains: tuple[str, ...]) -> None:
    lines = render(netmap, "wg0", device_hooks=device_hooks).splitlines()
    table = f"{family} wiremesh"
    assert f"delete table {table}" not in lines
    flush = lines.index(f"flush table {table}")
    # The dynamic sets are created when missing and never deleted or redefined.
    assert any(ln.startswith("\tset flows { type ") for ln in lines[:flush])
    assert any(ln.startswith("\tset pings { typeof ") for ln in lines[:flush])
    after = "\n".join(lines[flush:])
    assert "set flows" not in after and "set pings" not in after
    # Everything a ruleset of that table may have held goes, so a router turned client
    # drops its NAT chain (and with it conntrack).
    for name in chains:
        assert f"delete chain {table} {name}" in lines[flush:]
    assert f"delete set {table} in_tcp" in lines[flush:]


@pytest.mark.parametrize("bad", [FlowTimeouts(tcp=0), FlowTimeouts(udp=True),
                                 FlowTimeouts(ping="30")])  # type: ignore[arg-type]
def test_bad_timeouts_are_refused(bad: FlowTimeouts) -> None:
    with pytest.raises(RenderError, match="timeouts"):
        render(nm(), "wg0", timeouts=bad)


def test_inbound_rules_land_in_their_sets_merged() -> None:
    s = render(nm(inbound=[
        InboundRule("100.64.0.5", "tcp", (P(22), P(8000, 8100))),
        InboundRule("100.64.0.5", "tcp", (P(23, 30),)),  # merges with 22
        InboundRule("100.64.0.6", "udp"),  # every port
        InboundRule("100.64.0.7", "icmp"),
        InboundRule("100.64.0.8", "all"),
        InboundRule("100.64.0.8", "tcp", (P(80),)),  # swallowed by all
    ]), "wg0")
    s = final_table(s, "netdev")
    assert elements(s, "in_tcp") == ["100.64.0.5 . 22-30", "100.64.0.5 . 8000-8100"]
    assert elements(s, "in_udp") == ["100.64.0.6 . 0-65535"]
    assert elements(s, "in_icmp") == ["100.64.0.7"]
    assert elements(s, "in_any") == ["100.64.0.8"]


def test_forward_rules_and_masquerade() -> None:
    s = render(nm(forward=[
        ForwardRule("100.64.0.5", "198.18.1.0/24", "tcp", (P(443),)),
        ForwardRule("100.64.0.6", "198.18.0.0/15", "all"),
    ], masquerade=["198.18.1.0/24", "198.18.0.0/15"]), "wg0")
    assert elements(s, "fwd_tcp") == ["100.64.0.5 . 198.18.1.0/24 . 443"]
    assert elements(s, "fwd_any") == ["100.64.0.6 . 198.18.0.0/15"]
    assert elements(s, "masq_dst") == ["198.18.0.0/15"]  # overlapping prefixes collapsed
    assert "\t\tip saddr 100.64.0.0/10 ip daddr @masq_dst masquerade" in s


def test_render_is_deterministic() -> None:
    rules = [InboundRule(f"100.64.0.{i}", "tcp", (P(i),)) for i in range(1, 200)]
    assert render(nm(inbound=rules), "wg0") == render(nm(inbound=reversed(rules)), "wg0")


@pytest.mark.parametrize(("netmap", "ifname", "message"), [
    (nm(), 'wg0"; flush ruleset; "', "ifname"),
    (nm(), "a-very-long-interface-name", "ifname"),
    (nm(), "wg0\n", "ifname"),
    (nm(inbound=[InboundRule("fd00::1", "all")]), "wg0", "inbound src"),
    (nm(forward=[ForwardRule("100.64.0.1", "198.18.1.1/24", "all")]), "wg0", "prefix"),
])
def test_bad_input_is_refused(netmap: Netmap, ifname: str, message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render(netmap, ifname)


def clamp_rules(script: str) -> list[str]:
    m = re.search(r"\tchain mss_clamp {\n(.*?)\n\t}", script, re.S)
    assert m, "chain mss_clamp missing"
    return [ln.strip() for ln in m.group(1).splitlines()[1:]]


def test_routers_clamp_the_mss_of_syns_both_ways_to_the_tunnel_mtu() -> None:
    s = render(nm(forward=[ForwardRule("100.64.0.5", "198.18.0.0/16", "tcp", (P(80),))]),
               "wg0", mtu=1200)
    assert "type filter hook forward priority mangle; policy accept;" in s
    rules = clamp_rules(s)
    assert len(rules) == 4
    for direction in ("iifname", "oifname"):
        assert (f'{direction} "wg0" meta nfproto ipv4 tcp flags & (syn | rst) == syn '
                "tcp option maxseg size > 1160 tcp option maxseg size set 1160") in rules
        assert (f'{direction} "wg0" meta nfproto ipv6 tcp flags & (syn | rst) == syn '
                "tcp option maxseg size > 1140 tcp option maxseg size set 1140") in rules


def test_a_masquerading_exit_peer_clamps_at_the_default_mtu() -> None:
    rules = clamp_rules(render(nm(masquerade=["0.0.0.0/0"]), "wg0"))
    assert any("maxseg size set 1380" in r for r in rules)


def test_a_peer_that_forwards_nothing_has_no_clamp() -> None:
    s = render(nm(inbound=[InboundRule("100.64.0.5", "all")]), "wg0")
    assert "mss_clamp" not in final_table(s)


@pytest.mark.parametrize("mtu", [1199, 9001, True, "1400", 1400.0])
def test_a_bad_mtu_is_refused(mtu: object) -> None:
    netmap = nm(forward=[ForwardRule("100.64.0.5", "198.18.0.0/16", "all")])
    with pytest.raises(RenderError, match="mtu"):
        render(netmap, "wg0", mtu=mtu)  # type: ignore[arg-type]
