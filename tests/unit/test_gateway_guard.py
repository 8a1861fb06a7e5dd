"""The nftables guard's rendering (applied for real in the e2e tests)."""

from __future__ import annotations

from wiremesh.gateway.guard import TABLE, render_table, render_update


def test_table_replaces_leftovers_and_matches_only_initiations() -> None:
    text = render_table(51820)
    assert text.index(f"delete table inet {TABLE}") < text.index("chain input")
    assert "udp dport 51820 udp length 156 @th,64,8 1 ip saddr . udp sport @peers4 accept" in text
    assert text.rstrip().endswith("}") and "counter drop" in text


def test_update_deletes_before_adding_and_splits_families() -> None:
    text = render_update(["198.51.100.7:4000", "[fd00::7]:4001"], ["198.51.100.8:4002"])
    assert text.splitlines() == [
        f"delete element inet {TABLE} peers4 {{ 198.51.100.8 . 4002 }}",
        f"add element inet {TABLE} peers4 {{ 198.51.100.7 . 4000 }}",
        f"add element inet {TABLE} peers6 {{ fd00::7 . 4001 }}",
    ]
