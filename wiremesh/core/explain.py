"""Why may (or may not) peer a open a connection to peer b, and the whole reachability matrix.

- `explain(state, a, b, proto="all", port=None) -> Explanation`: a is a peer id or name; b
  a peer id or name, or an IPv4 address outside the mesh, which a reaches through routes
  (exit nodes for the whole internet): then each policy's verdict says whether it opens a
  route covering the address to a, through which routers; `proto` is tcp, udp, icmp or
  `all` (any protocol: "may a open anything to b?", or with a port, "tcp or udp to that
  port"); `port` None asks "any port at all". The explanation
  lists every policy with its verdict: `allows`, `disabled`, `source` (no source group holds a),
  `posture` (a is in a source group but fails the policy's posture check), `destination` (no
  destination group holds b), `proto` (protocol mismatch) or `port` (port outside the
  policy's ranges). `Explanation.summary()` is one human line.
- `matrix(state, netmaps=None) -> dict[(a id, b id), Access]`: for each ordered pair where a
  may open anything to b, the normalised (proto, port ranges) list. Pass the compiler's
  netmaps to avoid a recompile.

Both follow exactly the semantics the compiler enforces (tests check that they agree).
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from wiremesh.core.ipam import OVERLAY_NET
from wiremesh.core.models import MeshState, PeerInfo, Policy, PortRange, Proto, Route
from wiremesh.core.policy import ALL_GROUP, compile_netmaps
from wiremesh.core.wire import Netmap

Verdict = Literal["allows", "disabled", "source", "posture", "destination", "proto", "port"]
AskProto = Literal["all", "tcp", "udp", "icmp"]
# Normalised access: (("all", ()),) or per protocol, () meaning every port.
Access = tuple[tuple[Proto, tuple[PortRange, ...]], ...]


@dataclass(frozen=True)
class PolicyVerdict:
    policy: str
    verdict: Verdict
    reason: str


@dataclass(frozen=True)
class Explanation:
    src: str
    dst: str
    proto: AskProto
    port: int | None
    allowed: bool
    allowed_by: tuple[str, ...]
    verdicts: tuple[PolicyVerdict, ...]

    def summary(self) -> str:
        what = f"{self.src} -> {self.dst} {self.proto}" + (
            f"/{self.port}" if self.port is not None else "")
        if self.allowed:
            return f"{what}: allowed by {', '.join(self.allowed_by)}"
        if not self.verdicts:
            return f"{what}: denied: there are no policies (default deny)"
        reasons = "; ".join(f"{v.policy}: {v.reason}" for v in self.verdicts)
        return f"{what}: denied (default deny): {reasons}"


def find_peer(state: MeshState, ref: int | str) -> PeerInfo:
    """A peer by id or by name; ValueError naming the reference when there is none. Text of
    ASCII digits is an id when a peer has it, else a name (as the admin API reads a peer
    reference; names are never all digits now, older ones may be)."""
    if isinstance(ref, int) and not isinstance(ref, bool):
        if ref in state.peers:
            return state.peers[ref]
        raise ValueError(f"no peer with id {ref}")
    if isinstance(ref, str) and ref.isascii() and ref.isdigit() and int(ref) in state.peers:
        return state.peers[int(ref)]
    for p in state.peers.values():
        if p.name == ref:
            return p
    raise ValueError(f"no peer named {ref!r}")


def group_members(state: MeshState, group: str) -> frozenset[int]:
    if group == ALL_GROUP:
        return frozenset(state.peers)
    return frozenset(state.groups.get(group, ())) & state.peers.keys()


def _in_groups(state: MeshState, pid: int, groups: Iterable[str]) -> bool:
    return any(pid in group_members(state, g) for g in groups)


def _ports_text(ports: tuple[PortRange, ...]) -> str:
    return ",".join(str(p) for p in ports)


def _verdict(state: MeshState, p: Policy, a: PeerInfo, b: PeerInfo, proto: AskProto,
             port: int | None) -> PolicyVerdict:
    if not p.enabled:
        return PolicyVerdict(p.name, "disabled", "policy is disabled")
    def source(x: PeerInfo) -> bool:
        return _in_groups(state, x.id, p.sources) and (
            p.posture is None or p.posture.failure(x) is None)

    forward = source(a) and _in_groups(state, b.id, p.destinations)
    backward = p.bidirectional and source(b) and _in_groups(state, a.id, p.destinations)
    if not (forward or backward):
        why = p.posture.failure(a) if p.posture is not None else None
        if why is not None and _in_groups(state, a.id, p.sources) and _in_groups(
                state, b.id, p.destinations):
            return PolicyVerdict(p.name, "posture", f"posture: {why}")
        a_side = _in_groups(state, a.id, p.sources) or (
            p.bidirectional and _in_groups(state, a.id, p.destinations))
        if not a_side:
            return PolicyVerdict(p.name, "source",
                                 f"{a.name} is in none of its source groups "
                                 f"[{', '.join(p.sources)}]")
        return PolicyVerdict(p.name, "destination",
                             f"{b.name} is in none of its destination groups "
                             f"[{', '.join(p.destinations)}]")
    return _proto_port_verdict(p, proto, port)


def _proto_port_verdict(p: Policy, proto: AskProto, port: int | None,
                        via: str = "") -> PolicyVerdict:
    if proto == "all" and port is not None and p.protocol == "icmp":
        return PolicyVerdict(p.name, "proto", f"it allows icmp, not a port ({port})")
    if proto != "all" and p.protocol not in ("all", proto):
        return PolicyVerdict(p.name, "proto", f"it allows {p.protocol}, not {proto}")
    if (proto != "icmp" and p.protocol != "all" and p.ports and port is not None
            and not any(r.contains(port) for r in p.ports)):
        return PolicyVerdict(p.name, "port",
                             f"port {port} is outside {p.protocol} {_ports_text(p.ports)}")
    what = p.protocol if p.protocol == "all" or not p.ports else (
        f"{p.protocol} {_ports_text(p.ports)}")
    return PolicyVerdict(p.name, "allows", f"allows {what}{via}")


def _route_verdict(state: MeshState, p: Policy, a: PeerInfo, address: str,
                   covering: dict[str, Route], proto: AskProto,
                   port: int | None) -> PolicyVerdict:
    if not p.enabled:
        return PolicyVerdict(p.name, "disabled", "policy is disabled")
    opened = [covering[r] for r in p.destination_routes if r in covering]
    if not opened:
        return PolicyVerdict(p.name, "destination", f"it opens no route covering {address}")
    if not _in_groups(state, a.id, p.sources):
        return PolicyVerdict(p.name, "source", f"{a.name} is in none of its source groups "
                             f"[{', '.join(p.sources)}]")
    # The most specific route wins on the client, as WireGuard's allowed IPs do.
    best = max(opened, key=lambda r: ipaddress.ip_network(r.prefix).prefixlen)
    routers = sorted(state.peers[pid].name for pid in group_members(state, best.router_group)
                     if pid != a.id)
    via = f" through route {best.name} ({best.prefix}, routers {', '.join(routers)})"
    if best.prefix == "0.0.0.0/0":
        via += f"; exit node: {a.name} must opt in with --exit-node"
    return _proto_port_verdict(p, proto, port, via)


def _address(ref: int | str) -> str | None:
    try:
        return str(ipaddress.IPv4Address(ref)) if isinstance(ref, str) and ref.isascii() else None
    except ValueError:
        return None


def explain(state: MeshState, src: int | str, dst: int | str, proto: AskProto = "all",
            port: int | None = None) -> Explanation:
    """Whether `src` may open a `proto` connection to `dst` (on `port`), and why."""
    if proto not in ("all", "tcp", "udp", "icmp"):
        raise ValueError(f"proto: expected all, tcp, udp or icmp, got {proto!r}")
    if port is not None and (proto == "icmp" or not 1 <= port <= 65535):
        raise ValueError(f"port: {port} makes no sense for {proto}" if proto == "icmp"
                         else f"port: {port} is outside 1..65535")
    a = find_peer(state, src)
    address = _address(dst)
    if address is not None and not any(p.name == dst for p in state.peers.values()):
        return _explain_address(state, a, address, proto, port)
    b = find_peer(state, dst)
    if a.id == b.id:
        raise ValueError("source and destination are the same peer")
    verdicts = tuple(_verdict(state, p, a, b, proto, port) for p in state.policies)
    allowed_by = tuple(v.policy for v in verdicts if v.verdict == "allows")
    return Explanation(a.name, b.name, proto, port, bool(allowed_by), allowed_by, verdicts)


def _explain_address(state: MeshState, a: PeerInfo, address: str, proto: AskProto,
                     port: int | None) -> Explanation:
    ip = ipaddress.IPv4Address(address)
    if ip in OVERLAY_NET:
        raise ValueError(f"{address} is an overlay address: name the peer instead")
    covering = {r.name: r for r in state.routes if r.enabled
                and ip in ipaddress.ip_network(r.prefix)
                and group_members(state, r.router_group) - {a.id}}
    verdicts = tuple(_route_verdict(state, p, a, address, covering, proto, port)
                     for p in state.policies)
    allowed_by = tuple(v.policy for v in verdicts if v.verdict == "allows")
    return Explanation(a.name, address, proto, port, bool(allowed_by), allowed_by, verdicts)


def _merge_ranges(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    out: list[PortRange] = []
    for r in sorted(ranges):
        if out and r.start <= out[-1].end + 1:
            out[-1] = PortRange(out[-1].start, max(out[-1].end, r.end))
        else:
            out.append(r)
    return tuple(out)


def normalise_access(grants: Iterable[tuple[Proto, tuple[PortRange, ...]]]) -> Access:
    """One entry per protocol, ranges merged; `all` swallows the rest, () = every port."""
    by_proto: dict[Proto, list[PortRange] | None] = {}
    for proto, ports in grants:
        if proto == "all":
            return (("all", ()),)
        if proto == "icmp" or not ports:
            by_proto[proto] = None
        elif by_proto.get(proto, []) is not None:
            by_proto.setdefault(proto, []).extend(ports)  # type: ignore[union-attr]
    return tuple((proto, () if ports is None else _merge_ranges(ports))
                 for proto, ports in sorted(by_proto.items()))


def matrix(state: MeshState,
           netmaps: Mapping[int, Netmap] | None = None) -> dict[tuple[int, int], Access]:
    """(a, b) -> what a may open to b, for every pair where that is anything at all."""
    netmaps = compile_netmaps(state) if netmaps is None else netmaps
    by_ip = {p.overlay_ip: pid for pid, p in state.peers.items()}
    out: dict[tuple[int, int], Access] = {}
    for b, nm in netmaps.items():
        grants: dict[int, list[tuple[Proto, tuple[PortRange, ...]]]] = defaultdict(list)
        for rule in nm.inbound:
            grants[by_ip[rule.src]].append((rule.proto, rule.ports))
        for a, g in grants.items():
            out[(a, b)] = normalise_access(g)
    return out
