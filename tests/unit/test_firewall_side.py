"""The side channel's nftables script: only non-WireGuard datagrams to the WireGuard port move
to the agent's port (the kernel's side is tested in tests/e2e/test_portside_nft.py)."""

from __future__ import annotations

import pytest

from wiremesh.firewall.side import TABLE, render


def test_one_stateless_rule_moves_what_is_not_wireguard() -> None:
    script = render(51820, 40123)
    assert script.startswith(f"table inet {TABLE}\ndelete table inet {TABLE}\n")
    rules = [line.strip() for line in script.splitlines() if "dport" in line]
    assert rules == ["udp dport 51820 @th,72,24 != 0 udp dport set 40123"]
    assert "ct " not in script  # no conntrack for WireGuard's packets


@pytest.mark.parametrize(("wg", "side", "error"), [
    (0, 40000, "wg_port"), (51820, 70000, "side_port"), (51820, 51820, "side_port"),
    (True, 40000, "wg_port"), ("51820", 40000, "wg_port"),
])
def test_bad_ports_are_refused_by_name(wg: object, side: object, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        render(wg, side)  # type: ignore[arg-type]
