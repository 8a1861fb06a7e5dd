"""The one interface every WireGuard backend (userspace UAPI, kernel netlink) implements."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Protocol

from wiremesh.core.wire import check_endpoint, check_key, check_prefix, endpoint_host_port


class WgError(RuntimeError):
    pass


@dataclass(frozen=True)
class WgPeerConfig:
    """Desired state of one peer; `allowed_ips` replaces whatever the peer had."""

    public_key: str
    allowed_ips: tuple[str, ...] = ()
    endpoint: str | None = None
    persistent_keepalive: int = 0

    def __post_init__(self) -> None:
        # Only validated values get this far, and each is checked again to be in canonical
        # form: a raw string (a newline in it would start a new UAPI statement) never
        # reaches a backend.
        try:
            check_key(self.public_key)
            if self.endpoint is not None and (
                    check_endpoint(self.endpoint) != self.endpoint
                    or endpoint_host_port(self.endpoint)[1] is None):
                raise ValueError(f"endpoint {self.endpoint!r} is not a canonical IP:PORT")
            for ip in self.allowed_ips:
                if check_prefix(ip) != ip:
                    raise ValueError(f"allowed IP {ip!r} is not a canonical prefix")
            if (not isinstance(self.persistent_keepalive, int)
                    or not 0 <= self.persistent_keepalive <= 65535):
                raise ValueError(f"keepalive {self.persistent_keepalive!r} is not 0..65535")
        except ValueError as e:
            raise WgError(f"refusing WireGuard peer {self.public_key!r}: {e}") from None

    def with_keepalive(self, seconds: int) -> WgPeerConfig:
        """This peer with another keepalive. The other fields were checked when this one was
        made, so they are not parsed again (the JIT gateway writes every peer twice)."""
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 <= seconds <= 65535:
            raise WgError(f"refusing keepalive {seconds!r}: not 0..65535")
        out = copy.copy(self)
        object.__setattr__(out, "persistent_keepalive", seconds)
        return out


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

    def set_device(self, private_key: str, listen_port: int, fwmark: int = 0) -> None:
        """`fwmark` marks the device's own (encrypted) packets, so policy routing can keep
        them out of the tunnel (exit nodes)."""
        ...

    def set_peers(
        self, upsert: list[WgPeerConfig], remove: list[str], replace_all: bool = False
    ) -> None:
        """Apply all changes in one atomic write."""
        ...

    def status(self) -> WgDeviceStatus: ...

    def close(self) -> None:
        """Remove the interface (and stop any helper process)."""
        ...
