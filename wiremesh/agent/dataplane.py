"""Applies netmaps to this machine: WireGuard peers, overlay address and the inbound ACL.

Only the difference from what was last applied is written, so an unchanged peer's session and
roamed endpoint are left alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from wiremesh.agent.state import AgentConfig
from wiremesh.core.netmap import Netmap
from wiremesh.firewall import nft
from wiremesh.netlink.addresses import ensure_address
from wiremesh.netlink.sysctl import set_forwarding
from wiremesh.wg.backend import WgBackend, WgPeerConfig
from wiremesh.wg.keys import decode_key, public_key_of

log = logging.getLogger("wiremesh.agent.dataplane")
KEEPALIVE_S = 25  # keeps NAT mappings open toward peers behind NAT
KEEPALIVE_HOLD_S = 0.5  # see initiates()


def make_backend(kind: str, ifname: str) -> WgBackend:
    """`auto` prefers the kernel module and falls back to wireguard-go."""
    from wiremesh.wg.kernel import KernelBackend, kernel_available
    from wiremesh.wg.uapi import WireguardGoBackend

    if kind == "kernel" or (kind == "auto" and kernel_available()):
        return KernelBackend(ifname)
    return WireguardGoBackend(ifname)


def desired_peers(netmap: Netmap,
                  extra_allowed: Callable[[str], tuple[str, ...]] = lambda _k: (),
                  keepalive: Callable[[str], int] = lambda _k: KEEPALIVE_S,
                  ) -> dict[str, WgPeerConfig]:
    out = {}
    for key, p in netmap.peers.items():
        out[key] = WgPeerConfig(
            public_key=key,
            allowed_ips=(f"{p.overlay_ip}/32", *extra_allowed(key)),
            endpoint=p.endpoints[0] if p.endpoints else None,
            persistent_keepalive=keepalive(key),
        )
    return out


def initiates(own_key: str, peer_key: str) -> bool:
    """Which side of a new pair starts the handshake at once.

    Setting a keepalive makes WireGuard initiate immediately. When both sides of a new pair
    do that at the same moment (the server pushes both netmaps together), the two initiations
    cross, each side's answer to the other's wipes its own pending handshake, and the pair
    stalls until the 5 s retry. So only the side with the larger key starts at once; the
    other holds its keepalive back for KEEPALIVE_HOLD_S. Setting it then starts a fresh
    handshake if none succeeded meanwhile: when the first initiation reached us before we
    had the peer, or crossed with one our own traffic started, the pair waits half a second,
    not five."""
    return decode_key(own_key) > decode_key(peer_key)


class DataPlane:
    """`extra_allowed(key)` names the routed prefixes peer `key` holds right now (the
    failover RouteManager decides)."""

    def __init__(self, backend: WgBackend, config: AgentConfig, private_key: str,
                 extra_allowed: Callable[[str], tuple[str, ...]] = lambda _k: ()) -> None:
        self.backend = backend
        self.config = config
        self.private_key = private_key
        self.extra_allowed = extra_allowed
        self.applied: dict[str, WgPeerConfig] | None = None
        self.netmap: Netmap | None = None
        self.forwarding = False
        self.public_key = public_key_of(private_key)
        self.held: dict[str, float] = {}  # peer key -> when its keepalive may start

    def next_release(self) -> float | None:
        """When a held keepalive is due (time.monotonic()), if any: sync_peers then."""
        return min(self.held.values(), default=None)

    def start(self) -> None:
        self.backend.set_device(self.private_key, self.config.listen_port)
        ensure_address(self.config.interface, self.config.overlay_ip,
                       self.config.overlay_prefix_len)

    def apply(self, netmap: Netmap) -> None:
        # The ACL goes first: a peer added below must never be reachable beyond policy.
        nft.apply(netmap, self.config.interface)
        routing = bool(netmap.forward or netmap.masquerade)
        if routing != self.forwarding:
            set_forwarding(routing)
            self.forwarding = routing
        self.sync_peers(netmap)

    def sync_peers(self, netmap: Netmap) -> None:
        """Write the WireGuard peers `netmap` calls for now (the ACL is left as it is): on
        its own when only a held keepalive came due."""
        now = time.monotonic()
        before = self.applied or {}
        for key in netmap.peers.keys() - before.keys():
            if not initiates(self.public_key, key):
                self.held[key] = now + KEEPALIVE_HOLD_S
        self.held = {k: t for k, t in self.held.items() if t > now and k in netmap.peers}
        want = desired_peers(netmap, self.extra_allowed,
                             lambda k: 0 if k in self.held else KEEPALIVE_S)
        if self.applied is None:
            # First write after start: replace whatever a previous run left on the device.
            self.backend.set_peers(list(want.values()), [], replace_all=True)
            upserts, removes = len(want), 0
        else:
            up = [p for k, p in want.items() if self.applied.get(k) != p]
            rm = [k for k in self.applied if k not in want]
            self.backend.set_peers(up, rm)
            upserts, removes = len(up), len(rm)
        self.applied, self.netmap = want, netmap
        log.info("applied netmap version=%d peers=%d upserts=%d removes=%d",
                 netmap.version, len(want), upserts, removes)

    def close(self) -> None:
        try:
            nft.remove()
        finally:
            self.backend.close()
