"""Exit-node routing in the current network namespace: policy routing the way wg-quick and
Tailscale do it (pyroute2), for IPv4 and IPv6 alike.

    ip route add default dev <wg> table 51820             # IPv4: into the tunnel
    ip -6 route add unreachable default table 51820       # IPv6: nowhere (the overlay and the
                                                          # exit nodes carry IPv4 only)
    ip rule add to <bypass> lookup main priority 5270     # server, relays, peers' endpoints,
                                                          # local networks when asked
    ip rule add not fwmark 51820 lookup 51820 priority 5271

The main table stays as it is (no route of anyone else's is touched, and taking the rules away
gives the machine its old routing back at once). WireGuard marks its own encrypted packets
with the fwmark, so they never loop into the tunnel; the agent's other traffic to the server,
relays and peers' underlay addresses is kept out by the bypass rules. Everything else, the
overlay and routed prefixes included, goes into the WireGuard interface, whose allowed IPs
pick the peer (the most specific wins, so the exit node gets only what no other peer holds).
IPv6 to the internet gets "unreachable" at once, instead of leaving outside the tunnel the user
asked to send everything through (programs fall back to IPv4 without waiting).
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
_ENOENT, _ESRCH, _EAFNOSUPPORT = 2, 3, 97
_FAMILIES = {4: (socket.AF_INET, "0.0.0.0"), 6: (socket.AF_INET6, "::")}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ours(rule: object) -> bool:
    return getattr(rule, "get", lambda _k: None)("priority") in (BYPASS_PRIORITY,
                                                                 TUNNEL_PRIORITY)


def sync_exit_routing(ifname: str, bypass: Iterable[str] | None) -> None:
    """Send everything but `bypass` (IPv4 and IPv6 prefixes) into `ifname` (IPv6: refuse it);
    None takes it all away.

    Raises LinkMissing when the interface does not exist (yet)."""
    wanted = (None if bypass is None else
              {ipaddress.ip_network(p, strict=False) for p in bypass})
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if wanted is not None and not idx:
            raise LinkMissing(f"no interface {ifname}")
        for version in (4, 6):
            try:
                _sync_family(ipr, version, idx[0] if idx else 0,
                             None if wanted is None else
                             {n for n in wanted if n.version == version})
            except NetlinkError as e:
                if version == 6 and e.code == _EAFNOSUPPORT:
                    continue  # no IPv6 in this kernel or namespace: nothing can leak there
                raise


def _sync_family(ipr: IPRoute, version: int, oif: int, wanted: set[Network] | None) -> None:
    family, _ = _FAMILIES[version]
    rules = [r for r in ipr.get_rules(family=family) if _ours(r)]
    have_bypass = {_rule_dst(r, version): r for r in rules
                   if r.get("priority") == BYPASS_PRIORITY}
    have_tunnel = [r for r in rules if r.get("priority") == TUNNEL_PRIORITY]
    if wanted is None:
        for r in have_tunnel:  # the tunnel rule first: never a moment without bypass
            _del_rule(ipr, family, r)
        for r in have_bypass.values():
            _del_rule(ipr, family, r)
        _flush_table(ipr, family)
        return
    for net in sorted(wanted - have_bypass.keys(), key=str):
        ipr.rule("add", family=family, table=_MAIN_TABLE, priority=BYPASS_PRIORITY,
                 dst=str(net.network_address), dst_len=net.prefixlen)
    if version == 4:
        ipr.route("replace", dst="0.0.0.0/0", oif=oif, table=EXIT_TABLE,
                  proto=RTPROT_WIREMESH)
    else:
        ipr.route("replace", family=family, dst="::/0", type="unreachable", table=EXIT_TABLE,
                  proto=RTPROT_WIREMESH)
    if not have_tunnel:
        ipr.rule("add", family=family, table=EXIT_TABLE, priority=TUNNEL_PRIORITY,
                 fwmark=FWMARK, fwmask=0xFFFFFFFF, flags=_FIB_RULE_INVERT)
    for net, r in have_bypass.items():
        if net not in wanted:
            _del_rule(ipr, family, r)


def _rule_dst(rule: object, version: int) -> Network:
    get = rule.get  # type: ignore[attr-defined]
    return ipaddress.ip_network(f"{get('dst') or _FAMILIES[version][1]}/{rule['dst_len']}")  # type: ignore[index]


def _del_rule(ipr: IPRoute, family: int, rule: object) -> None:
    try:
        ipr.rule("del", **_rule_spec(family, rule))
    except NetlinkError as e:
        if e.code not in (_ENOENT, _ESRCH):
            raise


def _rule_spec(family: int, rule: object) -> dict[str, object]:
    get = rule.get  # type: ignore[attr-defined]
    spec: dict[str, object] = {"family": family, "priority": get("priority"),
                               "table": get("table")}
    if get("dst"):
        spec.update(dst=get("dst"), dst_len=rule["dst_len"])  # type: ignore[index]
    if get("fwmark") is not None:
        spec.update(fwmark=get("fwmark"), fwmask=get("fwmask"), flags=get("flags"))
    return spec


def _flush_table(ipr: IPRoute, family: int) -> None:
    default = "0.0.0.0/0" if family == socket.AF_INET else "::/0"
    for r in ipr.route("dump", family=family, table=EXIT_TABLE):
        if r.get("table") == EXIT_TABLE:
            try:
                ipr.route("del", family=family, dst=default, type=r["type"], table=EXIT_TABLE)
            except NetlinkError as e:
                if e.code not in (_ENOENT, _ESRCH):
                    raise
