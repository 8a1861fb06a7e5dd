"""The simulated NATs' nftables rulesets, per kind."""

from __future__ import annotations

import pytest

from wiremesh.lab.layout import NatKind
from wiremesh.lab.nat import lan_subnet, render_ruleset


def test_port_preserving_masquerades_without_randomising_and_forwards_all_outbound() -> None:
    rules = render_ruleset(NatKind.PORT_PRESERVING, "wan0", "lan0")
    assert 'oifname "wan0" masquerade\n' in rules
    assert 'iifname "lan0" oifname "wan0" accept' in rules
    # What arrives unasked is dropped before it can become a conntrack entry.
    assert 'iifname "wan0" ct state established,related accept\n\t\tiifname "wan0" drop' in rules


def test_random_port_nat_picks_a_fresh_port_per_mapping() -> None:
    assert "masquerade fully-random" in render_ruleset(NatKind.RANDOM_PORT, "w", "l")


def test_udp_blocked_network_lets_only_tcp_out() -> None:
    rules = render_ruleset(NatKind.UDP_BLOCKED, "w", "l")
    assert 'iifname "l" oifname "w" meta l4proto tcp accept' in rules
    assert 'iifname "l" oifname "w" accept' not in rules
    assert "policy drop" in rules.split("chain forward")[1]


def test_lans_stay_inside_198_19() -> None:
    assert lan_subnet(1) == "198.19.1.0/24"
    with pytest.raises(ValueError, match=r"198\.19\.0\.0/16"):
        lan_subnet(256)
