"""Applies netmaps to this machine: WireGuard peers, overlay address and the inbound ACL.

Only the difference from what was last applied is written, so an unchanged peer's session and
roamed endpoint are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from wiremesh.agent.state import AgentConfig
from wiremesh.core.netmap import Netmap
from wiremesh.firewall import nft
from wiremesh.netlink.addresses import ensure_address
from wiremesh.netlink.sysctl import set_forwarding
from wiremesh.wg.backend import WgBackend, WgPeerConfig

log = logging.getLogger("wiremesh.agent.dataplane")
KEEPALIVE_S = 25  # keeps NAT mappings open toward peers behind NAT


def make_backend(kind: str, ifname: str) -> WgBackend:
    """`auto` prefers the kernel module and falls back to wireguard-go."""
    from wiremesh.wg.kernel import KernelBackend, kernel_available
    from wiremesh.wg.uapi import WireguardGoBackend

    if kind == "kernel" or (kind == "auto" and kernel_available()):
        return KernelBackend(ifname)
    return WireguardGoBackend(ifname)


def desired_peers(netmap: Netmap,
                  extra_allowed: Callable[[str], tuple[str, ...]] = lambda _k: ()
                  ) -> dict[str, WgPeerConfig]:
    out = {}
    for key, p in netmap.peers.items():
        out[key] = WgPeerConfig(
            public_key=key,
            allowed_ips=(f"{p.overlay_ip}/32", *extra_allowed(key)),
            endpoint=p.endpoints[0] if p.endpoints else None,
            persistent_keepalive=KEEPALIVE_S,
        )
    return out


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
        want = desired_peers(netmap, self.extra_allowed)
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
