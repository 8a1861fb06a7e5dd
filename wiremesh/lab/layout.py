"""A lab network as data: where each peer sits (on the internet or behind which NAT), and the
pairs a correct NAT-traversal design connects directly. Pure: nothing here touches the machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

INTERNET = "192.0.2.0/24"


class NatKind(StrEnum):
    # nftables masquerade keeps the source port when it is free: one mapping per socket for
    # every destination, inbound only from where that socket sent to (conntrack).
    PORT_PRESERVING = "port-preserving"
    # masquerade fully-random: a new random port for every destination (a "symmetric" NAT).
    RANDOM_PORT = "random-port"
    # masquerade, but only TCP leaves: all outgoing UDP is dropped.
    UDP_BLOCKED = "udp-blocked"


@dataclass(frozen=True)
class Layout:
    """Peers by name -> the NAT they sit behind (None: a public address on the internet);
    NATs by name -> kind; extra public hosts (relays); the internet's subnet."""

    peers: Mapping[str, str | None]
    nats: Mapping[str, NatKind] = field(default_factory=dict)
    relays: tuple[str, ...] = ()
    internet: str = INTERNET

    def __post_init__(self) -> None:
        for peer, nat in self.peers.items():
            if nat is not None and nat not in self.nats:
                raise ValueError(f"peer {peer!r}: no NAT named {nat!r}")

    @classmethod
    def public(cls, names: Iterable[str], internet: str = INTERNET) -> Layout:
        """Every peer with a public address."""
        return cls({n: None for n in names}, internet=internet)

    def kind(self, peer: str) -> NatKind | None:
        nat = self.peers[peer]
        return None if nat is None else self.nats[nat]

    def moved(self, peer: str, nat: str | None) -> Layout:
        """The same layout with `peer` behind `nat` (a roaming laptop)."""
        return Layout({**self.peers, peer: nat}, self.nats, self.relays, self.internet)


def direct_possible(layout: Layout, a: str, b: str) -> bool:
    """Whether a correct hole-punching design connects a and b directly (issue 10): neither
    side UDP-blocked, and one side public, or both behind port-preserving NATs, or both behind
    the same NAT. A random-port NAT meets only public peers: without port prediction it cannot
    meet a NAT that filters by address and port."""
    ka, kb = layout.kind(a), layout.kind(b)
    if NatKind.UDP_BLOCKED in (ka, kb):
        return False
    if ka is None or kb is None:
        return True
    if layout.peers[a] == layout.peers[b]:
        return True
    return ka == kb == NatKind.PORT_PRESERVING


def direct_expected(layout: Layout) -> set[tuple[str, str]]:
    """The ordered pairs of distinct peers that should run direct."""
    return {(a, b) for a in layout.peers for b in layout.peers
            if a != b and direct_possible(layout, a, b)}
