"""Exit-node routing in the current network namespace: policy routing the way wg-quick and
Tailscale do it (pyroute2).

    ip route add default dev <wg> table 51820
    ip rule add to <bypass> lookup main priority 5270     # server, relays, peers' endpoints,
                                                          # local networks when asked
    ip rule add not fwmark 51820 lookup 51820 priority 5271

The main table stays as it is (no route of anyone else's is touched, and taking the rules away
gives the machine its old routing back at once). WireGuard marks its own encrypted packets
with the fwmark, so they never loop into the tunnel; the agent's other traffic to the server,
relays and peers' underlay addresses is kept out by the bypass rules. Everything else, the
overlay and routed prefixes included, goes into the WireGuard interface, whose allowed IPs
pick the peer (the most specific wins, so the exit node gets only what no other peer holds).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from wiremesh.netlink.routes import RTPROT_WIREMESH, LinkMissing

EXIT_TABLE = 51820
FWMARK = 51820
BYPASS_PRIORITY = 5270
TUNNEL_PRIORITY = 5271
_MAIN_TABLE = 254
_FIB_RULE_INVERT = 0x2
_ENOENT, _ESRCH = 2, 3


def _ours(rule: object) -> bool:
    return getattr(rule, "get", lambda _k: None)("priority") in (BYPASS_PRIORITY,
                                                                 TUNNEL_PRIORITY)


def sync_exit_routing(ifname: str, bypass: Iterable[str] | None) -> None:
    """Send everything but `bypass` (IPv4 prefixes) into `ifname`; None takes it all away.

    Raises LinkMissing when the interface does not exist (yet)."""
    wanted = (None if bypass is None else
              {ipaddress.IPv4Network(p, strict=False) for p in bypass})
    with IPRoute() as ipr:
        rules = [r for r in ipr.get_rules(family=socket.AF_INET) if _ours(r)]
        have_bypass = {ipaddress.IPv4Network(f"{r.get('dst') or '0.0.0.0'}/{r['dst_len']}")
                       : r for r in rules if r.get("priority") == BYPASS_PRIORITY}
        have_tunnel = [r for r in rules if r.get("priority") == TUNNEL_PRIORITY]
        if wanted is None:
            for r in have_tunnel:  # the tunnel rule first: never a moment without bypass
                _del_rule(ipr, r)
            for r in have_bypass.values():
                _del_rule(ipr, r)
            _flush_table(ipr)
            return
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise LinkMissing(f"no interface {ifname}")
        for net in sorted(wanted - have_bypass.keys()):
            ipr.rule("add", family=socket.AF_INET, table=_MAIN_TABLE,
                     priority=BYPASS_PRIORITY, dst=str(net.network_address),
                     dst_len=net.prefixlen)
        ipr.route("replace", dst="0.0.0.0/0", oif=idx[0], table=EXIT_TABLE,
                  proto=RTPROT_WIREMESH)
        if not have_tunnel:
            ipr.rule("add", family=socket.AF_INET, table=EXIT_TABLE, priority=TUNNEL_PRIORITY,
                     fwmark=FWMARK, fwmask=0xFFFFFFFF, flags=_FIB_RULE_INVERT)
        for net, r in have_bypass.items():
            if net not in wanted:
                _del_rule(ipr, r)


def exit_rules() -> list[tuple[int, str, int]]:
    """Our rules as (priority, destination prefix, table), for tests and the lab."""
    with IPRoute() as ipr:
        return sorted((r.get("priority"),
                       f"{r.get('dst') or '0.0.0.0'}/{r['dst_len']}", r.get("table"))
                      for r in ipr.get_rules(family=socket.AF_INET) if _ours(r))


def _del_rule(ipr: IPRoute, rule: object) -> None:
    try:
        ipr.rule("del", **_rule_spec(rule))
    except NetlinkError as e:
        if e.code not in (_ENOENT, _ESRCH):
            raise


def _rule_spec(rule: object) -> dict[str, object]:
    get = rule.get  # type: ignore[attr-defined]
    spec: dict[str, object] = {"family": socket.AF_INET, "priority": get("priority"),
                               "table": get("table")}
    if get("dst"):
        spec.update(dst=get("dst"), dst_len=rule["dst_len"])  # type: ignore[index]
    if get("fwmark") is not None:
        spec.update(fwmark=get("fwmark"), fwmask=get("fwmask"), flags=get("flags"))
    return spec


def _flush_table(ipr: IPRoute) -> None:
    for r in ipr.route("dump", family=socket.AF_INET, table=EXIT_TABLE):
        if r.get("table") == EXIT_TABLE:
            try:
                ipr.route("del", dst="0.0.0.0/0", oif=r.get("oif"), table=EXIT_TABLE)
            except NetlinkError as e:
                if e.code not in (_ENOENT, _ESRCH):
                    raise
