"""A peer's netmap as an nftables script (pure): the inbound ACL, router forwarding, NAT.

`render(netmap, ifname)` returns a script for `nft -f` that replaces table `inet wiremesh` in
one transaction (create-if-missing, delete, recreate), so the kernel never holds half a ruleset:

- chain `input` sends packets arriving on `ifname` to `from_mesh`: established/related pass,
  invalid drop, then new connections are accepted only when (source overlay IP[, port]) is in
  the allowed sets (`in_any` for proto all, `in_icmp`, and `in_tcp`/`in_udp`: concatenated
  interval sets of `ip . port`, so thousands of rules cost one lookup), else dropped (counted).
  Traffic on any other interface (the underlay, WireGuard's own UDP) is not touched.
- chain `forward` does the same for packets from `ifname` into routed prefixes, from the
  netmap's forward rules (sets `fwd_*` of `ip . prefix[ . port]`); replies pass as
  established. A peer with no forward rules forwards nothing from the mesh.
- chain `postrouting` (only when the netmap masquerades) source-NATs traffic from the overlay
  into the masqueraded prefixes.
- chain `mss_clamp` (only on peers that forward: routers and exit nodes) lowers the MSS of
  TCP SYNs crossing `ifname` either way to what fits the tunnel's MTU. The machines behind a
  router do not know the tunnel is narrower than their LAN, and ICMP "fragmentation needed"
  rarely makes it back to them: without the clamp, ping works and a download hangs.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterable

from wiremesh.core.explain import Access, normalise_access
from wiremesh.core.failover import PROBE_PORT
from wiremesh.core.models import PROTOS, PortRange, Proto
from wiremesh.core.wire import (
    DEFAULT_MTU,
    MTU_MAX,
    MTU_MIN,
    Netmap,
     check_ipv4,
    check_name,
    check_prefix,
)

TABLE = "wiremesh"
OVERLAY = "100.64.0.0/10"
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class RenderError(ValueError):
    pass


# Bytes of IP + TCP header between an MTU and the MSS that fits in it.
_TCP_OVERHEAD = {"ipv4": 40, "ipv6": 60}


def _mss_clamp(ifname: str, mtu: int) -> list[str]:
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not MTU_MIN <= mtu <= MTU_MAX:
        raise RenderError(f"mtu: {mtu!r} is not a number in {MTU_MIN}..{MTU_MAX}")
    lines = [
        "\tchain mss_clamp {",
        "\t\ttype filter hook forward priority mangle; policy accept;",
    ]
    for family, overhead in _TCP_OVERHEAD.items():
        mss = mtu - overhead
        for direction in ("iifname", "oifname"):
            lines.append(f'\t\t{direction} "{ifname}" meta nfproto {family} '
                         f"tcp flags & (syn | rst) == syn "
                         f"tcp option maxseg size > {mss} tcp option maxseg size set {mss}")
    lines.append("\t}")
    return lines


# Every value is checked again here, whatever validated it before: only a canonical address,
# prefix, port range or name may become part of an nft statement.


def _ipv4(text: str, what: str) -> str:
    try:
        return check_ipv4(text)
    except ValueError:
        raise RenderError(f"{what}: {text!r} is not an IPv4 address") from None


def _prefix(text: str) -> str:
    try:
        return str(ipaddress.IPv4Network(check_prefix(text)))
    except ValueError:
        raise RenderError(f"prefix: {text!r} is not an IPv4 prefix") from None


def _ports(ports: tuple[PortRange, ...]) -> list[str]:
    if not ports:
        return ["0-65535"]
    for p in ports:
        if not isinstance(p, PortRange):
            raise RenderError(f"ports: {p!r} is not a port range")
    return [str(p) for p in ports]


def _proto(proto: str) -> Proto:
    if proto not in PROTOS:
        raise RenderError(f"proto: {proto!r} is not one of {', '.join(PROTOS)}")
    return proto


def _set(name: str, typ: str, elements: Iterable[str], interval: bool) -> list[str]:
    elements = sorted(set(elements))
    out = [f"\tset {name} {{", f"\t\ttype {typ}"]
    if interval:
        out.append("\t\tflags interval")
    if elements:
        out.append("\t\telements = {")
        out += [f"\t\t\t{e}," for e in elements]
        out.append("\t\t}")
    out.append("\t}")
    return out


def _by_proto(grants: dict[str, Access]) -> dict[str, list[tuple[str, tuple[PortRange, ...]]]]:
    """key -> access  into  proto -> [(key, ports)], keys with proto `all` under `all`."""
    out: dict[str, list[tuple[str, tuple[PortRange, ...]]]] = defaultdict(list)
    for key, access in grants.items():
        for proto, ports in access:
            out[proto].append((key, ports))
    return out


def _grants(items: Iterable[tuple[str, Proto, tuple[PortRange, ...]]]) -> dict[str, Access]:
    raw: dict[str, list[tuple[Proto, tuple[PortRange, ...]]]] = defaultdict(list)
    for key, proto, ports in items:
        raw[key].append((proto, ports))
    return {k: normalise_access(v) for k, v in raw.items()}


def _no_overlap(prefixes: Iterable[str]) -> list[str]:
    nets = [ipaddress.IPv4Network(_prefix(p)) for p in prefixes]
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


def render(netmap: Netmap, ifname: str, overlay: str = OVERLAY, mtu: int = DEFAULT_MTU) -> str:
    """The nftables script enforcing `netmap` on WireGuard interface `ifname`, whose MTU is
    `mtu`."""
    if not _IFNAME.match(ifname):
        raise RenderError(f"ifname: {ifname!r} is not a valid interface name")
    overlay = _prefix(overlay)
    try:
        check_name(netmap.name)
    except ValueError as e:
        raise RenderError(f"name: {e}") from None
    if isinstance(netmap.version, bool) or not isinstance(netmap.version, int):
        raise RenderError(f"version: {netmap.version!r} is not a number")

    inbound = _by_proto(_grants(
        (_ipv4(r.src, "inbound src"), _proto(r.proto), r.ports) for r in netmap.inbound))
    # Concatenated interval sets take overlapping elements (a /16 and a /24 in it), so forward
    # keys need no collapsing; only the plain interval set of masqueraded prefixes does.
    forward = _by_proto(_grants(
        (f"{_ipv4(r.src, 'forward src')} . {_prefix(r.prefix)}", _proto(r.proto), r.ports)
        for r in netmap.forward))

    def port_elements(entries: list[tuple[str, tuple[PortRange, ...]]]) -> list[str]:
        return [f"{key} . {p}" for key, ports in entries for p in _ports(ports)]

    lines = [
        f"# wiremesh ruleset for {netmap.name} ({_ipv4(netmap.overlay_ip, 'overlay_ip')}), "
        f"netmap version "
        f"{netmap.version}",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
    ]
    lines += _set("in_any", "ipv4_addr", (k for k, _ in inbound["all"]), interval=False)
    lines += _set("in_icmp", "ipv4_addr", (k for k, _ in inbound["icmp"]), interval=False)
    lines += _set("in_tcp", "ipv4_addr . inet_service", port_elements(inbound["tcp"]), True)
    lines += _set("in_udp", "ipv4_addr . inet_service", port_elements(inbound["udp"]), True)
    # Clients allowed to use this router's routes probe it (failover health checks).
    lines += _set("probe_src", "ipv4_addr",
                  sorted({_ipv4(r.src, "forward src") for r in netmap.forward}), interval=False)
    lines += _set("fwd_any", "ipv4_addr . ipv4_addr", (k for k, _ in forward["all"]), True)
    lines += _set("fwd_icmp", "ipv4_addr . ipv4_addr", (k for k, _ in forward["icmp"]), True)
    lines += _set("fwd_tcp", "ipv4_addr . ipv4_addr . inet_service",
                  port_elements(forward["tcp"]), True)
    lines += _set("fwd_udp", "ipv4_addr . ipv4_addr . inet_service",
                  port_elements(forward["udp"]), True)
    lines += [
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        f'\t\tiifname "{ifname}" jump from_mesh',
        "\t}",
        "\tchain from_mesh {",
        "\t\tct state established,related accept",
        "\t\tct state invalid drop",
        "\t\tip saddr @in_any accept",
        "\t\tip protocol icmp ip saddr @in_icmp accept",
        "\t\tip saddr . tcp dport @in_tcp accept",
        "\t\tip saddr . udp dport @in_udp accept",
        f"\t\tip saddr @probe_src udp dport {PROBE_PORT} accept",
        "\t\tcounter drop",
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        f'\t\tiifname "{ifname}" jump mesh_forward',
        "\t}",
        "\tchain mesh_forward {",
        "\t\tct state established,related accept",
        "\t\tct state invalid drop",
        # Never from the mesh back into it: an exit node's 0.0.0.0/0 grant must not carry a
        # client to other peers (masqueraded as the exit node, around their own ACLs).
        f"\t\tip daddr {overlay} counter drop",
        "\t\tip saddr . ip daddr @fwd_any accept",
        "\t\tip protocol icmp ip saddr . ip daddr @fwd_icmp accept",
        "\t\tip saddr . ip daddr . tcp dport @fwd_tcp accept",
        "\t\tip saddr . ip daddr . udp dport @fwd_udp accept",
        "\t\tcounter drop",
        "\t}",
    ]
    if netmap.masquerade:
        lines += _set("masq_dst", "ipv4_addr", _no_overlap(netmap.masquerade), True)
        lines += [
            "\tchain postrouting {",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;",
            f"\t\tip saddr {overlay} ip daddr @masq_dst masquerade",
            "\t}",
        ]
    if netmap.forward or netmap.masquerade:
        lines += _mss_clamp(ifname, mtu)
    lines.append("}")
    return "\n".join(lines) + "\n"
