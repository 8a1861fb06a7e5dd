"""A peer's netmap as an nftables script (pure): the inbound ACL, router forwarding, NAT.

`render(netmap, ifname)` returns a script for `nft -f` that replaces the contents of table
`wiremesh` in one transaction, so the kernel never holds half a ruleset; only the elements
of its dynamic sets (the flows this peer opened) live on:

- chain `from_mesh` judges packets arriving on `ifname`: replies to what this peer opened
  pass, then new connections are accepted only when (source overlay IP[, port]) is in the
  allowed sets (`in_any` for proto all, `in_icmp`, and `in_tcp`/`in_udp`: concatenated
  interval sets of `ip . port`, so thousands of rules cost one lookup), else dropped
  (counted). Traffic on any other interface (the underlay, WireGuard's own UDP) is not
  touched.
- Where it hooks in and what a reply is: see `render`. A peer that routes nothing has its
  ACL in table `netdev wiremesh`, on the ingress and egress hooks of `ifname` alone, with the
  reflexive sets `flows` and `pings` filled by chain `to_mesh` from what it sends into the
  mesh (no conntrack in its namespace: see `_to_mesh`). Routers and exit nodes, which need
  conntrack for forwarding and NAT anyway, keep table `inet wiremesh` on the input hook with
  conntrack's established/related.
- chain `forward` (table `inet wiremesh`, always) does the same for packets from `ifname`
  into routed prefixes, from the netmap's forward rules (sets `fwd_*` of
  `ip . prefix[ . port]`); replies pass as established. A peer with no forward rules
  forwards nothing from the mesh.
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
from dataclasses import dataclass

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
FAMILIES = ("netdev", "inet")  # the families tables of ours may be in
OVERLAY = "100.64.0.0/10"
IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # fullmatch: `$` would let "wg0\n" through


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


@dataclass(frozen=True)
class FlowTimeouts:
    """How long (seconds) a flow this peer opened stays open to replies after its last packet
    out: conntrack's defaults (TCP established 5 days, opening or closing 2 minutes, UDP 2
    minutes, ICMP 30 s)."""

    tcp: int = 5 * 24 * 3600
    tcp_edge: int = 120  # after a SYN, FIN or RST of ours: a handshake or a close
    udp: int = 120
    ping: int = 30

    def check(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RenderError(f"timeouts.{name}: {value!r} is not a number of seconds")


# The reflexive ACL's sets, filled from the output path. Their elements are kept when the
# ruleset is replaced: a policy update must not cut the replies of the flows open right now.
# A full set takes no new flow (their replies are dropped) until entries expire.
FLOW_SET_SIZE = 65535
_DYNAMIC_SETS = {
    "flows": "type ipv4_addr . inet_proto . inet_service . inet_service",
    "pings": "typeof ip daddr . icmp id",
}
# Everything else a ruleset of ours may hold, named so a reload can delete it whichever
# kind of peer (router or not) rendered it before.
_CHAINS = ("input", "from_mesh", "output", "to_mesh", "forward", "mesh_forward", "postrouting",
           "mss_clamp")
_STATIC_SETS = {
    "in_any": "ipv4_addr", "in_icmp": "ipv4_addr", "in_tcp": "ipv4_addr . inet_service",
    "in_udp": "ipv4_addr . inet_service", "probe_src": "ipv4_addr",
    "fwd_any": "ipv4_addr . ipv4_addr", "fwd_icmp": "ipv4_addr . ipv4_addr",
    "fwd_tcp": "ipv4_addr . ipv4_addr . inet_service",
    "fwd_udp": "ipv4_addr . ipv4_addr . inet_service", "masq_dst": "ipv4_addr",
}
_INTERVAL = {"in_tcp", "in_udp", "fwd_any", "fwd_icmp", "fwd_tcp", "fwd_udp", "masq_dst"}
# What table `netdev wiremesh` holds besides the dynamic sets.
_DEVICE_CHAINS = ("from_mesh", "to_mesh")
_ACL_SETS = ("in_any", "in_icmp", "in_tcp", "in_udp", "probe_src")
_FLOW_OUT = "ip daddr . meta l4proto . th dport . th sport"
_FLOW_IN = "ip saddr . meta l4proto . th sport . th dport"


def _replace_keeping_flows(family: str, chains: Iterable[str],
                           static_sets: Iterable[str]) -> list[str]:
    """Empty table `<family> wiremesh` but for the dynamic sets' elements, whatever it held
    (one transaction with what follows): create what may be missing, flush every rule,
    delete the rest."""
    table = f"{family} {TABLE}"
    chains, static_sets = tuple(chains), tuple(static_sets)
    lines = [f"table {table} {{"]
    for name, key in _DYNAMIC_SETS.items():
        lines.append(f"\tset {name} {{ {key}; size {FLOW_SET_SIZE}; flags dynamic,timeout; }}")
    lines += [f"\tchain {c} {{}}" for c in chains]
    lines += [f"\tset {n} {{ type {_STATIC_SETS[n]};"
              f"{' flags interval;' if n in _INTERVAL else ''} }}" for n in static_sets]
    lines += ["}", f"flush table {table}"]
    lines += [f"delete chain {table} {c}" for c in chains]
    lines += [f"delete set {table} {n}" for n in static_sets]
    return lines


def drop_table(table: str, families: Iterable[str] = FAMILIES) -> list[str]:
    """Delete table `<family> <table>` of each family, there or not: declaring it first makes
    the delete valid either way, in the same transaction."""
    return [line for f in families for line in (f"table {f} {table}", f"delete table {f} {table}")]


def _to_mesh(t: FlowTimeouts) -> list[str]:
    """A peer that forwards nothing needs no conntrack: what it sends into the mesh records
    the flow (remote address, protocol, remote port, own port) in `flows`, and a packet from
    the mesh is a reply when its reversed tuple is there (`_replies`). WireGuard's cryptokey
    routing vouches for the source address, so a peer can only answer flows opened to it (or
    through it, when it routes the destination). Conntrack in the namespace costs every
    packet, the underlay's too, on wireguard-go's single sending and receiving goroutines."""
    return [
        # Most packets first: TCP in mid-connection.
        f"\t\ttcp flags & (syn | fin | rst) == 0 update @flows {{ {_FLOW_OUT} timeout {t.tcp}s }}"
        " accept",
        # A SYN-ACK answers a connection the peer opened, which policy let in: nothing to
        # record (a peer flooding SYNs would otherwise fill the set).
        "\t\ttcp flags & (syn | ack) == syn | ack accept",
        f"\t\tmeta l4proto tcp update @flows {{ {_FLOW_OUT} timeout {t.tcp_edge}s }} accept",
        f"\t\tmeta l4proto udp update @flows {{ {_FLOW_OUT} timeout {t.udp}s }} accept",
        f"\t\ticmp type echo-request update @pings {{ ip daddr . icmp id timeout {t.ping}s }}",
    ]


def _replies(own_ip: str, t: FlowTimeouts) -> list[str]:
    return [
        # The peer closing or resetting: its flow times out like one we close.
        f"\t\ttcp flags & (fin | rst) != 0 {_FLOW_IN} @flows "
        f"update @flows {{ {_FLOW_IN} timeout {t.tcp_edge}s }} accept",
        f"\t\t{_FLOW_IN} @flows accept",
        "\t\ticmp type echo-reply ip saddr . icmp id @pings accept",
        # Errors about a packet this peer sent (PMTU discovery's "fragmentation needed",
        # unreachable, TTL exceeded): the quoted header (no options) has our source.
        # Matching its whole tuple against `flows` is beyond nft's type checks.
        "\t\ticmp type { destination-unreachable, time-exceeded, parameter-problem } "
        f"@th,64,8 0x45 @th,160,32 {int(ipaddress.IPv4Address(own_ip)):#010x} accept",
    ]


def render(netmap: Netmap, ifname: str, overlay: str = OVERLAY, mtu: int = DEFAULT_MTU,
           timeouts: FlowTimeouts = FlowTimeouts(), device_hooks: bool = True) -> str:
    """The nftables script enforcing `netmap` on WireGuard interface `ifname`, whose MTU is
    `mtu`; `timeouts` for the flows a peer that routes nothing opened.

    A peer that routes nothing gets its ACL on the ingress and egress hooks of `ifname`
    (`device_hooks`): a chain on the input or output hook is run for every packet of the
    host, the underlay's WireGuard datagrams included, and on a 2-core lab that alone cost
    4-5 % of the tunnel's throughput (mesh/plain pair 0.90-0.94 with them, 0.98 without).
    `device_hooks=False` keeps them on the input and output hooks, for kernels without the
    egress hook (before 5.16). Routers and exit nodes stay there anyway: they need
    conntrack, which runs after ingress."""
    if not IFNAME.fullmatch(ifname):
        raise RenderError(f"ifname: {ifname!r} is not a valid interface name")
    overlay = _prefix(overlay)
    try:
        check_name(netmap.name)
    except ValueError as e:
        raise RenderError(f"name: {e}") from None
    if isinstance(netmap.version, bool) or not isinstance(netmap.version, int):
        raise RenderError(f"version: {netmap.version!r} is not a number")
    own_ip = _ipv4(netmap.overlay_ip, "overlay_ip")
    timeouts.check()
    routing = bool(netmap.forward or netmap.masquerade)

    inbound = _by_proto(_grants(
        (_ipv4(r.src, "inbound src"), _proto(r.proto), r.ports) for r in netmap.inbound))
    # Concatenated interval sets take overlapping elements (a /16 and a /24 in it), so forward
    # keys need no collapsing; only the plain interval set of masqueraded prefixes does.
    forward = _by_proto(_grants(
        (f"{_ipv4(r.src, 'forward src')} . {_prefix(r.prefix)}", _proto(r.proto), r.ports)
        for r in netmap.forward))

    def port_elements(entries: list[tuple[str, tuple[PortRange, ...]]]) -> list[str]:
        return [f"{key} . {p}" for key, ports in entries for p in _ports(ports)]

    def static_set(name: str, elements: Iterable[str]) -> list[str]:
        return _set(name, _STATIC_SETS[name], elements, name in _INTERVAL)

    acl_sets = [
        *static_set("in_any", (k for k, _ in inbound["all"])),
        *static_set("in_icmp", (k for k, _ in inbound["icmp"])),
        *static_set("in_tcp", port_elements(inbound["tcp"])),
        *static_set("in_udp", port_elements(inbound["udp"])),
        # Clients allowed to use this router's routes probe it (failover health checks).
        *static_set("probe_src", sorted({_ipv4(r.src, "forward src") for r in netmap.forward})),
    ]
    allowed = [
        "\t\tip saddr @in_any accept",
        "\t\tip protocol icmp ip saddr @in_icmp accept",
        "\t\tip saddr . tcp dport @in_tcp accept",
        "\t\tip saddr . udp dport @in_udp accept",
        f"\t\tip saddr @probe_src udp dport {PROBE_PORT} accept",
        "\t\tcounter drop",
    ]
    forward_hook = [
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        f'\t\tiifname "{ifname}" jump mesh_forward',
        "\t}",
    ]
    header = f"# wiremesh ruleset for {netmap.name} ({own_ip}), netmap version {netmap.version}"
    if not routing and device_hooks:
        lines = [
            header,
            *_replace_keeping_flows("netdev", _DEVICE_CHAINS, _ACL_SETS),
            # A router turned client leaves its inet layout behind, and the reverse below.
            *drop_table(TABLE, ("inet",)),
            f"table netdev {TABLE} {{",
            *acl_sets,
            "\tchain from_mesh {",
            f'\t\ttype filter hook ingress device "{ifname}" priority filter; policy accept;',
            # Ingress comes before reassembly. A fragment past the first carries no ports to
            # judge, and is harmless alone: the kernel rebuilds no datagram without its first
            # fragment, which the rules below judge (and it discards overlapping fragments,
            # so a later one cannot rewrite the judged header).
            "\t\tip frag-off & 0x1fff != 0 accept",
            *_replies(own_ip, timeouts),
            *allowed,
            "\t}",
            "\tchain to_mesh {",
            f'\t\ttype filter hook egress device "{ifname}" priority filter; policy accept;',
            *_to_mesh(timeouts),
            "\t}",
            "}",
            f"table inet {TABLE} {{",
            *forward_hook,
            "\tchain mesh_forward {", "\t\tcounter drop", "\t}",
            "}",
        ]
        return "\n".join(lines) + "\n"

    lines = [
        header,
        *drop_table(TABLE, ("netdev",)),
        *_replace_keeping_flows("inet", _CHAINS, _STATIC_SETS),
        f"table inet {TABLE} {{",
        *acl_sets,
    ]
    if routing:
        # Forwarding and NAT need conntrack anyway: replies are what it calls established.
        replies = ["\t\tct state established,related accept", "\t\tct state invalid drop"]
    else:
        replies = _replies(own_ip, timeouts)
        lines += [
            "\tchain output {",
            "\t\ttype filter hook output priority filter; policy accept;",
            f'\t\toifname "{ifname}" jump to_mesh',
            "\t}",
            "\tchain to_mesh {",
            *_to_mesh(timeouts),
            "\t}",
        ]
    lines += [
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        f'\t\tiifname "{ifname}" jump from_mesh',
        "\t}",
        "\tchain from_mesh {",
        *replies,
        *allowed,
        "\t}",
        *forward_hook,
    ]
    if not routing:
        lines += ["\tchain mesh_forward {", "\t\tcounter drop", "\t}", "}"]
        return "\n".join(lines) + "\n"
    lines += static_set("fwd_any", (k for k, _ in forward["all"]))
    lines += static_set("fwd_icmp", (k for k, _ in forward["icmp"]))
    lines += static_set("fwd_tcp", port_elements(forward["tcp"]))
    lines += static_set("fwd_udp", port_elements(forward["udp"]))
    lines += [
        "\tchain mesh_forward {",
        *replies,
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
        lines += static_set("masq_dst", _no_overlap(netmap.masquerade))
        lines += [
            "\tchain postrouting {",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;",
            f"\t\tip saddr {overlay} ip daddr @masq_dst masquerade",
            "\t}",
        ]
    lines += _mss_clamp(ifname, mtu)
    lines.append("}")
    return "\n".join(lines) + "\n"
