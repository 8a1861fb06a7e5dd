"""Deltas between two netmaps of a peer (the netmap types and their wire form: core/wire.py).

The server sends a full netmap first and then deltas; the agent applies a delta only to the
exact version it was computed from, so a lost or reordered message can never silently corrupt
its view (it asks for a full map instead).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from wiremesh.core.models import PortRange
from wiremesh.core.wire import (
    Netmap,
    NetmapDelta,
    NetmapPeer,
)


class DeltaMismatch(ValueError):
    """A delta was offered for a version other than the one held."""


PeersDiff = tuple[tuple[NetmapPeer, ...], tuple[str, ...]]  # (upserted, removed keys)


def diff_peers(old: dict[str, NetmapPeer], new: dict[str, NetmapPeer]) -> PeersDiff:
    """The peers `new` adds or changes and the keys it drops, each sorted by key."""
    if old is new:
        return (), ()
    # Compilers reuse unchanged peer objects, so the identity test settles most entries.
    upsert = tuple(sorted(
        (p for k, p in new.items() if (q := old.get(k)) is not p and q != p),
        key=lambda p: p.public_key))
    return upsert, tuple(sorted(k for k in old if k not in new))


class SharedPeersDiff:
    """`diff_peers` computed once per pair of peer tables: netmaps of peers in the same
    groups share one table (by identity), so one change diffs each table pair once, however
    many netmaps hold it. Keep one only while the netmaps it saw are alive (keys are ids)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int], PeersDiff] = {}

    def __call__(self, old: dict[str, NetmapPeer], new: dict[str, NetmapPeer]) -> PeersDiff:
        key = (id(old), id(new))
        got = self._seen.get(key)
        if got is None:
            got = self._seen[key] = diff_peers(old, new)
        return got


def diff(old: Netmap, new: Netmap,
         peers_diff: Callable[[dict[str, NetmapPeer], dict[str, NetmapPeer]], PeersDiff]
         = diff_peers) -> NetmapDelta:
    upsert, removed = peers_diff(old.peers, new.peers)
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
        relays=new.relays if new.relays != old.relays else None,
        dns=new.dns if new.dns != old.dns else None,
        mtu=new.mtu if new.mtu != old.mtu else None,
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
        relays=delta.relays if delta.relays is not None else old.relays,
        dns=delta.dns if delta.dns is not None else old.dns,
        mtu=delta.mtu if delta.mtu is not None else old.mtu,
    )


def digest(nm: Netmap, memo: dict[int, tuple[object, str]] | None = None) -> str:
    """What a netmap holds, version aside, as 32 hex digits: equal netmaps have equal digests
    in any process (sets and maps are sorted, never taken in hash order). A replica that
    never saw an agent's version can still tell that the agent holds what it would send.

    `memo` (kept by the caller, by object id, holding the object) reuses the text of peer
    tables and rule sets that many netmaps share: the same digest at a fraction of the cost
    when thousands of agents resume at once."""
    def ports(ps: tuple[PortRange, ...]) -> tuple[str, ...]:
        return tuple(str(p) for p in ps)

    def peers() -> str:
        return repr(sorted((p.public_key, p.name, p.overlay_ip, tuple(p.endpoints))
                           for p in nm.peers.values()))

    def inbound() -> str:
        return repr(sorted((r.src, r.proto, ports(r.ports)) for r in nm.inbound))

    def shared(obj: object, text: Callable[[], str]) -> str:
        if memo is None:
            return text()
        hit = memo.get(id(obj))
        if hit is None or hit[0] is not obj:
            hit = memo[id(obj)] = (obj, text())
        return hit[1]

    canon = (
        repr(nm.peer_id), repr(nm.name), repr(nm.overlay_ip),
        shared(nm.peers, peers), shared(nm.inbound, inbound),
        repr(sorted((r.name, r.prefix, tuple((k, m) for k, m in r.routers))
                    for r in nm.routes.values())),
        repr(sorted((f.src, f.prefix, f.proto, ports(f.ports)) for f in nm.forward)),
        repr(sorted(nm.masquerade)), repr(tuple(nm.relays)),
        repr((nm.dns.domain, tuple((z.zone, tuple(z.nameservers)) for z in nm.dns.zones))),
        repr(nm.mtu),
    )
    # The repr of the tuple of those values, as it was built whole before the memo.
    return hashlib.blake2b(f"({', '.join(canon)})".encode(), digest_size=16).hexdigest()


# The fields `digest` covers: a new Netmap field must be added there too (a unit test holds
# this list to the dataclass).
DIGESTED = ("version", "peer_id", "name", "overlay_ip", "peers", "inbound", "routes",
            "forward", "masquerade", "relays", "dns", "mtu")
