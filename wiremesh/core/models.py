"""Pure data model of a mesh: what the store holds, as the compiler sees it.

Everything here is immutable and hashable so snapshots can be shared between the
compiler, the netmap differ and tests without defensive copies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from wiremesh.core.posture import Posture

Proto = Literal["all", "tcp", "udp", "icmp"]
PROTOS: tuple[Proto, ...] = ("all", "tcp", "udp", "icmp")
_PORTS = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")


@dataclass(frozen=True, order=True)
class PortRange:
    start: int
    end: int

    def __post_init__(self) -> None:
        if not (1 <= self.start <= self.end <= 65535):
            raise ValueError(
                f"bad port range {self.start}-{self.end}: need 1 <= start <= end <= 65535")

    def __str__(self) -> str:
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"

    @classmethod
    def parse(cls, text: str | int) -> PortRange:
        """Parse `22`, `"22"` or `"8000-8100"` (ASCII digits only: `int()` would also take
        other scripts' digits); raises ValueError naming the bad text."""
        if isinstance(text, int) and not isinstance(text, bool):
            return cls(text, text)
        m = _PORTS.fullmatch(str(text).strip())
        if not m:
            raise ValueError(f"bad port {text!r}: expected N or N-M with 1..65535")
        start = int(m[1])
        return cls(start, int(m[2]) if m[2] else start)

    def contains(self, port: int) -> bool:
        return self.start <= port <= self.end


@dataclass(frozen=True)
class PeerInfo:
    id: int
    name: str
    public_key: str
    overlay_ip: str
    endpoints: tuple[str, ...] = ()
    listen_port: int = 51820
    # As the peer's agent reports them (posture checks): "" = not reported.
    agent_version: str = ""
    os_family: str = ""
    # A JIT gateway (enrolled with a gateway setup key): it may be named in groups, but it
    # learns its population from its own feed, so it gets no netmap and is in nobody's.
    gateway: bool = False


@dataclass(frozen=True)
class Policy:
    name: str
    sources: tuple[str, ...]
    destinations: tuple[str, ...]
    protocol: Proto = "all"
    ports: tuple[PortRange, ...] = ()  # empty = every port (or n/a for icmp/all)
    bidirectional: bool = False
    enabled: bool = True
    # Routes (by name) this policy opens to its sources, in addition to peer groups.
    destination_routes: tuple[str, ...] = ()
    description: str = ""
    # What its source peers must satisfy (core/posture.py); None: nothing.
    posture: Posture | None = None


@dataclass(frozen=True)
class Route:
    name: str
    prefix: str
    router_group: str
    metric: int = 100
    # Per-router metric overrides, by peer name; lower wins.
    router_metrics: tuple[tuple[str, int], ...] = ()
    masquerade: bool = True
    enabled: bool = True


@dataclass(frozen=True)
class MeshState:
    """A consistent snapshot of everything the compiler needs."""

    peers: dict[int, PeerInfo] = field(default_factory=dict)
    groups: dict[str, frozenset[int]] = field(default_factory=dict)
    policies: tuple[Policy, ...] = ()
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class MeshChange:
    """What moved in a mesh since a snapshot, as the change log tells it (store/mesh.py
    `load_since`); `PolicyCompiler.apply` takes it in time proportional to the change."""

    peers: dict[int, PeerInfo | None] = field(default_factory=dict)  # None: removed
    groups: dict[str, frozenset[int] | None] = field(default_factory=dict)  # None: deleted
    policies: dict[str, Policy | None] = field(default_factory=dict)  # by name; None: deleted
    routes: dict[str, Route | None] = field(default_factory=dict)  # likewise


class HeldMesh(Protocol):
    """What reading a `MeshChange` from the change log needs of the mesh the reader holds
    (the policy compiler has it): the groups naming a peer, and a group's members."""

    def groups_of(self, peer_id: int) -> frozenset[str]: ...

    def group(self, name: str) -> frozenset[int] | None: ...
