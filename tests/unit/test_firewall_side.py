"""The side channel's nftables script: only non-WireGuard datagrams to the WireGuard port move
to the agent's port, on the ingress of the underlay devices or, as the fallback, on the input
hook (the kernel's side is tested in tests/e2e/test_portside_nft.py)."""

from __future__ import annotations

import pytest

from wiremesh.firewall.side import TABLE, host_firewall, render

# Both families go first: a switch from the input fallback leaves nothing behind.
DROP = (f"table netdev {TABLE}\ndelete table netdev {TABLE}\n"
        f"table inet {TABLE}\ndelete table inet {TABLE}\n")
RULE = "udp dport 51820 @th,72,24 != 0 udp dport set 40123"


def _hook(script: str) -> str:
    return next(line.strip() for line in script.splitlines() if "type filter hook" in line)


def test_one_stateless_rule_on_the_ingress_of_the_underlay_devices() -> None:
    script = render(51820, 40123, ["wmab12u1", "eth0.100"])
    assert script.startswith(DROP)
    assert f"table netdev {TABLE} {{" in script
    assert f"table inet {TABLE} {{" not in script
    assert _hook(script) == ('type filter hook ingress devices = { "eth0.100", "wmab12u1" } '
                             'priority 50; policy accept;')
    rules = [line.strip() for line in script.splitlines() if "dport" in line]
    assert rules == [RULE]
    assert "ct " not in script  # no conntrack for WireGuard's packets


def test_devices_are_listed_once_in_a_stable_order() -> None:
    assert render(51820, 40123, ["b", "a", "b"]) == render(51820, 40123, ["a", "b"])


def test_the_fallback_is_the_same_rule_on_the_input_hook() -> None:
    script = render(51820, 40123, None)
    assert script.startswith(DROP)
    assert f"table inet {TABLE} {{" in script
    assert "netdev" not in script.removeprefix(DROP)
    assert _hook(script) == "type filter hook input priority 50; policy accept;"
    assert [line.strip() for line in script.splitlines() if "dport" in line] == [RULE]


@pytest.mark.parametrize("device", [
    "", "a" * 16, 'eth0" }; flush ruleset; {"', "eth 0", "eth0\n", "wlan/0", "é0", 7, None,
])
def test_bad_device_names_are_refused_by_name(device: object) -> None:
    with pytest.raises(ValueError, match=r"devices: .* is not an interface name"):
        render(51820, 40123, ["eth0", device])  # type: ignore[list-item]


def test_an_empty_device_list_is_refused() -> None:
    with pytest.raises(ValueError, match="devices: no interface"):
        render(51820, 40123, [])


@pytest.mark.parametrize(("wg", "side", "error"), [
    (0, 40000, "wg_port"), (51820, 70000, "side_port"), (51820, 51820, "side_port"),
    (True, 40000, "wg_port"), ("51820", 40000, "wg_port"),
])
@pytest.mark.parametrize("devices", [["eth0"], None])
def test_bad_ports_are_refused_by_name(wg: object, side: object, error: str,
                                       devices: list[str] | None) -> None:
    with pytest.raises(ValueError, match=error):
        render(wg, side, devices)  # type: ignore[arg-type]


def _chain(family: str, table: str, hook: str | None = "input") -> dict[str, object]:
    base = {"type": "filter", "hook": hook, "prio": 0, "policy": "drop"} if hook else {}
    return {"family": family, "table": table, "name": "c", "handle": 1, **base}


@pytest.mark.parametrize(("chains", "legacy", "found"), [
    ([], [], None),
    ([_chain("inet", "filter")], [], "chain inet filter c"),
    ([_chain("ip", "filter")], [], "chain ip filter c"),  # iptables-nft
    ([_chain("ip6", "firewalld")], [], "chain ip6 firewalld c"),
    ([], ["nat", "filter"], "the legacy iptables filter table"),
    # Ours (the ACL of routers, the side rule's own fallback), other hooks, regular chains,
    # the netdev family and legacy tables without input filtering are no host firewall.
    ([_chain("inet", "wiremesh"), _chain("inet", TABLE), _chain("inet", "f", "forward"),
      _chain("inet", "f", "output"), _chain("inet", "f", None), _chain("netdev", "f", "ingress")],
     ["nat", "mangle"], None),
])
def test_a_host_firewall_is_a_foreign_chain_on_the_input_hook(
        chains: list[dict[str, object]], legacy: list[str], found: str | None) -> None:
    assert host_firewall(chains, legacy) == found
