"""The one interface every WireGuard backend (userspace UAPI, kernel netlink) implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class WgError(RuntimeError):
    pass


@dataclass(frozen=True)
class WgPeerConfig:
    """Desired state of one peer; `allowed_ips` replaces whatever the peer had."""

    public_key: str
    allowed_ips: tuple[str, ...] = ()
    endpoint: str | None = None
    persistent_keepalive: int = 0


@dataclass
class WgPeerStatus:
    public_key: str
    endpoint: str | None = None
    allowed_ips: list[str] = field(default_factory=list)
    last_handshake: float = 0.0  # unix seconds, 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0
    persistent_keepalive: int = 0


@dataclass
class WgDeviceStatus:
    public_key: str | None
    listen_port: int
    peers: dict[str, WgPeerStatus]


class WgBackend(Protocol):
    ifname: str

    def set_device(self, private_key: str, listen_port: int) -> None: ...

    def set_peers(
        self, upsert: list[WgPeerConfig], remove: list[str], replace_all: bool = False
    ) -> None:
        """Apply all changes in one atomic write."""
        ...

    def status(self) -> WgDeviceStatus: ...

    def close(self) -> None:
        """Remove the interface (and stop any helper process)."""
        ...
