"""A peer's netmap (its slice of the mesh), deltas between two netmaps, and their JSON form.

The server sends a full netmap first and then deltas; the agent applies a delta only to the
exact version it was computed from, so a lost or reordered message can never silently corrupt
its view (it asks for a full map instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wiremesh.core.models import PortRange, Proto


@dataclass(frozen=True)
class NetmapPeer:
    public_key: str
    name: str
    overlay_ip: str
    endpoints: tuple[str, ...] = ()


@dataclass(frozen=True, order=True)
class InboundRule:
    """`src` (an overlay IP) may open connections to this peer with `proto` on `ports`."""

    src: str
    proto: Proto
    ports: tuple[PortRange, ...] = ()


@dataclass(frozen=True, order=True)
class ForwardRule:
    """On a router peer: `src` may open connections into `prefix` with `proto` on `ports`."""

    src: str
    prefix: str
    proto: Proto
    ports: tuple[PortRange, ...] = ()


@dataclass(frozen=True)
class RouteEntry:
    """A network this peer may use, with candidate routers as (public key, metric)."""

    name: str
    prefix: str
    routers: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Netmap:
    version: int
    peer_id: int
    name: str
    overlay_ip: str
    peers: dict[str, NetmapPeer] = field(default_factory=dict)
    inbound: frozenset[InboundRule] = frozenset()
    routes: dict[str, RouteEntry] = field(default_factory=dict)
    forward: frozenset[ForwardRule] = frozenset()
    masquerade: frozenset[str] = frozenset()  # prefixes this router masquerades into


@dataclass(frozen=True)
class NetmapDelta:
    from_version: int
    to_version: int
    upsert_peers: tuple[NetmapPeer, ...] = ()
    remove_peers: tuple[str, ...] = ()
    add_inbound: frozenset[InboundRule] = frozenset()
    remove_inbound: frozenset[InboundRule] = frozenset()
    upsert_routes: tuple[RouteEntry, ...] = ()
    remove_routes: tuple[str, ...] = ()
    add_forward: frozenset[ForwardRule] = frozenset()
    remove_forward: frozenset[ForwardRule] = frozenset()
    masquerade: frozenset[str] | None = None  # None = unchanged
    name: str | None = None
    overlay_ip: str | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.upsert_peers or self.remove_peers or self.add_inbound or self.remove_inbound
            or self.upsert_routes or self.remove_routes or self.add_forward
            or self.remove_forward or self.masquerade is not None or self.name is not None
            or self.overlay_ip is not None
        )


class DeltaMismatch(ValueError):
    """A delta was offered for a version other than the one held."""


def diff(old: Netmap, new: Netmap) -> NetmapDelta:
    if old.peers is new.peers:
        upsert: tuple[NetmapPeer, ...] = ()
        removed: tuple[str, ...] = ()
    else:
        # Compilers reuse unchanged peer objects, so the identity test settles most entries.
        op = old.peers
        upsert = tuple(sorted(
            (p for k, p in new.peers.items() if (q := op.get(k)) is not p and q != p),
            key=lambda p: p.public_key))
        removed = tuple(sorted(k for k in op if k not in new.peers))
    r_up = tuple(r for k, r in sorted(new.routes.items()) if old.routes.get(k) != r)
    r_rm = tuple(sorted(k for k in old.routes if k not in new.routes))
    return NetmapDelta(
        from_version=old.version,
        to_version=new.version,
        upsert_peers=upsert,
        remove_peers=removed,
        add_inbound=new.inbound - old.inbound,
        remove_inbound=old.inbound - new.inbound,
        upsert_routes=r_up,
        remove_routes=r_rm,
        add_forward=new.forward - old.forward,
        remove_forward=old.forward - new.forward,
        masquerade=new.masquerade if new.masquerade != old.masquerade else None,
        name=new.name if new.name != old.name else None,
        overlay_ip=new.overlay_ip if new.overlay_ip != old.overlay_ip else None,
    )


def apply_delta(old: Netmap, delta: NetmapDelta) -> Netmap:
    if delta.from_version != old.version:
        raise DeltaMismatch(f"delta is from version {delta.from_version}, we hold {old.version}")
    peers = {k: p for k, p in old.peers.items() if k not in set(delta.remove_peers)}
    peers.update({p.public_key: p for p in delta.upsert_peers})
    routes = {k: r for k, r in old.routes.items() if k not in set(delta.remove_routes)}
    routes.update({r.name: r for r in delta.upsert_routes})
    return Netmap(
        version=delta.to_version,
        peer_id=old.peer_id,
        name=delta.name if delta.name is not None else old.name,
        overlay_ip=delta.overlay_ip if delta.overlay_ip is not None else old.overlay_ip,
        peers=peers,
        inbound=(old.inbound - delta.remove_inbound) | delta.add_inbound,
        routes=routes,
        forward=(old.forward - delta.remove_forward) | delta.add_forward,
        masquerade=delta.masquerade if delta.masquerade is not None else old.masquerade,
    )


# --- JSON form -------------------------------------------------------------------------------


def _ports_json(ports: tuple[PortRange, ...]) -> list[str]:
    return [str(p) for p in ports]


def _ports_parse(items: list[Any]) -> tuple[PortRange, ...]:
    return tuple(PortRange.parse(x) for x in items)


def _peer_json(p: NetmapPeer) -> dict[str, Any]:
    return {"public_key": p.public_key, "name": p.name, "overlay_ip": p.overlay_ip,
            "endpoints": list(p.endpoints)}


def _peer_parse(d: dict[str, Any]) -> NetmapPeer:
    return NetmapPeer(d["public_key"], d["name"], d["overlay_ip"], tuple(d.get("endpoints", ())))


def _rule_json(r: InboundRule) -> dict[str, Any]:
    return {"src": r.src, "proto": r.proto, "ports": _ports_json(r.ports)}


def _rule_parse(d: dict[str, Any]) -> InboundRule:
    return InboundRule(d["src"], d["proto"], _ports_parse(d.get("ports", [])))


def _fwd_json(r: ForwardRule) -> dict[str, Any]:
    return {"src": r.src, "prefix": r.prefix, "proto": r.proto, "ports": _ports_json(r.ports)}


def _fwd_parse(d: dict[str, Any]) -> ForwardRule:
    return ForwardRule(d["src"], d["prefix"], d["proto"], _ports_parse(d.get("ports", [])))


def _route_json(r: RouteEntry) -> dict[str, Any]:
    return {"name": r.name, "prefix": r.prefix, "routers": [list(x) for x in r.routers]}


def _route_parse(d: dict[str, Any]) -> RouteEntry:
    return RouteEntry(d["name"], d["prefix"], tuple((str(k), int(m)) for k, m in d["routers"]))


def netmap_to_json(n: Netmap) -> dict[str, Any]:
    return {
        "version": n.version,
        "peer_id": n.peer_id,
        "name": n.name,
        "overlay_ip": n.overlay_ip,
        "peers": [_peer_json(p) for _, p in sorted(n.peers.items())],
        "inbound": [_rule_json(r) for r in sorted(n.inbound)],
        "routes": [_route_json(r) for _, r in sorted(n.routes.items())],
        "forward": [_fwd_json(r) for r in sorted(n.forward)],
        "masquerade": sorted(n.masquerade),
    }


def netmap_from_json(d: dict[str, Any]) -> Netmap:
    peers = [_peer_parse(x) for x in d.get("peers", [])]
    routes = [_route_parse(x) for x in d.get("routes", [])]
    return Netmap(
        version=int(d["version"]),
        peer_id=int(d["peer_id"]),
        name=d["name"],
        overlay_ip=d["overlay_ip"],
        peers={p.public_key: p for p in peers},
        inbound=frozenset(_rule_parse(x) for x in d.get("inbound", [])),
        routes={r.name: r for r in routes},
        forward=frozenset(_fwd_parse(x) for x in d.get("forward", [])),
        masquerade=frozenset(d.get("masquerade", [])),
    )


def delta_to_json(x: NetmapDelta) -> dict[str, Any]:
    out: dict[str, Any] = {"from_version": x.from_version, "to_version": x.to_version}
    if x.upsert_peers:
        out["upsert_peers"] = [_peer_json(p) for p in x.upsert_peers]
    if x.remove_peers:
        out["remove_peers"] = list(x.remove_peers)
    if x.add_inbound:
        out["add_inbound"] = [_rule_json(r) for r in sorted(x.add_inbound)]
    if x.remove_inbound:
        out["remove_inbound"] = [_rule_json(r) for r in sorted(x.remove_inbound)]
    if x.upsert_routes:
        out["upsert_routes"] = [_route_json(r) for r in x.upsert_routes]
    if x.remove_routes:
        out["remove_routes"] = list(x.remove_routes)
    if x.add_forward:
        out["add_forward"] = [_fwd_json(r) for r in sorted(x.add_forward)]
    if x.remove_forward:
        out["remove_forward"] = [_fwd_json(r) for r in sorted(x.remove_forward)]
    if x.masquerade is not None:
        out["masquerade"] = sorted(x.masquerade)
    if x.name is not None:
        out["name"] = x.name
    if x.overlay_ip is not None:
        out["overlay_ip"] = x.overlay_ip
    return out


def delta_from_json(d: dict[str, Any]) -> NetmapDelta:
    masq = d.get("masquerade")
    return NetmapDelta(
        from_version=int(d["from_version"]),
        to_version=int(d["to_version"]),
        upsert_peers=tuple(_peer_parse(x) for x in d.get("upsert_peers", [])),
        remove_peers=tuple(d.get("remove_peers", [])),
        add_inbound=frozenset(_rule_parse(x) for x in d.get("add_inbound", [])),
        remove_inbound=frozenset(_rule_parse(x) for x in d.get("remove_inbound", [])),
        upsert_routes=tuple(_route_parse(x) for x in d.get("upsert_routes", [])),
        remove_routes=tuple(d.get("remove_routes", [])),
        add_forward=frozenset(_fwd_parse(x) for x in d.get("add_forward", [])),
        remove_forward=frozenset(_fwd_parse(x) for x in d.get("remove_forward", [])),
        masquerade=frozenset(masq) if masq is not None else None,
        name=d.get("name"),
        overlay_ip=d.get("overlay_ip"),
    )
