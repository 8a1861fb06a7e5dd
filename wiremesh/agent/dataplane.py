"""Applies netmaps to this machine: WireGuard peers, overlay address and the inbound ACL.

Only the difference from what was last applied is written, so an unchanged peer's session and
roamed endpoint are left alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from wiremesh.agent.state import AgentConfig
from wiremesh.core.contact import FirstContact, initiates
from wiremesh.core.wire import DEFAULT_MTU, Netmap, NetmapPeer, endpoint_host_port
from wiremesh.firewall import nft
from wiremesh.netlink.addresses import ensure_address, set_link_mtu
from wiremesh.netlink.policyroute import FWMARK
from wiremesh.netlink.sysctl import set_forwarding
from wiremesh.wg.backend import WgBackend, WgPeerConfig
from wiremesh.wg.keys import decode_key, public_key_of

log = logging.getLogger("wiremesh.agent.dataplane")
KEEPALIVE_S = 25  # keeps NAT mappings open toward peers behind NAT


def effective_mtu(config: AgentConfig, netmap: Netmap) -> int:
    """This peer's override (`wiremesh up --mtu`), else the mesh-wide MTU, else the default."""
    return config.mtu or netmap.mtu or DEFAULT_MTU


def make_backend(kind: str, ifname: str) -> WgBackend:
    """`auto` prefers the kernel module and falls back to wireguard-go."""
    from wiremesh.wg.kernel import KernelBackend, kernel_available
    from wiremesh.wg.uapi import WireguardGoBackend

    if kind == "kernel" or (kind == "auto" and kernel_available()):
        return KernelBackend(ifname)
    return WireguardGoBackend(ifname)


def first_endpoint(peer: NetmapPeer) -> str | None:
    """The first endpoint WireGuard can use: one with a port (the server also lists the bare
    address a peer's requests came from)."""
    return next((e for e in peer.endpoints if endpoint_host_port(e)[1] is not None), None)


def desired_peers(netmap: Netmap,
                  extra_allowed: Callable[[str], tuple[str, ...]] = lambda _k: (),
                  keepalive: Callable[[str], int] = lambda _k: KEEPALIVE_S,
                  endpoint: Callable[[NetmapPeer], str | None] = first_endpoint,
                  ) -> dict[str, WgPeerConfig]:
    out = {}
    for key, p in netmap.peers.items():
        out[key] = WgPeerConfig(
            public_key=key,
            allowed_ips=(f"{p.overlay_ip}/32", *extra_allowed(key)),
            endpoint=endpoint(p),
            persistent_keepalive=keepalive(key),
        )
    return out


class DataPlane:
    """`extra_allowed(key)` names the routed prefixes peer `key` holds right now (the
    failover RouteManager decides); `endpoint(peer)` where its packets go (direct or the
    relay: the PathManager decides)."""

    def __init__(self, backend: WgBackend, config: AgentConfig, private_key: str,
                 extra_allowed: Callable[[str], tuple[str, ...]] = lambda _k: (),
                 endpoint: Callable[[NetmapPeer], str | None] = first_endpoint) -> None:
        self.backend = backend
        self.config = config
        self.private_key = private_key
        self.extra_allowed = extra_allowed
        self.endpoint = endpoint
        self.applied: dict[str, WgPeerConfig] | None = None
        self.netmap: Netmap | None = None
        self.forwarding = False
        self.mtu: int | None = None  # as last set on the interface
        self.public_key = public_key_of(private_key)
        self.contact = FirstContact()

    def next_due(self) -> float | None:
        """When first contact with a new peer needs a look (time.monotonic()), if ever:
        sync_peers then."""
        return self.contact.next_due()

    def start(self) -> None:
        # WireGuard's own packets carry the exit-node fwmark, so with an exit node they never
        # loop into the tunnel (netlink/policyroute.py).
        self.backend.set_device(self.private_key, self.config.listen_port, fwmark=FWMARK)
        ensure_address(self.config.interface, self.config.overlay_ip,
                       self.config.overlay_prefix_len)

    def apply(self, netmap: Netmap) -> None:
        mtu = effective_mtu(self.config, netmap)
        # The ACL goes first: a peer added below must never be reachable beyond policy.
        # Its MSS clamp follows the MTU set next.
        nft.apply(netmap, self.config.interface, mtu=mtu)
        if mtu != self.mtu:
            set_link_mtu(self.config.interface, mtu)
            self.mtu = mtu
        routing = bool(netmap.forward or netmap.masquerade)
        if routing != self.forwarding:
            set_forwarding(routing)
            self.forwarding = routing
        self.sync_peers(netmap)

    def sync_peers(self, netmap: Netmap) -> None:
        """Write the WireGuard peers `netmap` calls for now (the ACL is left as it is): on
        its own when first contact with a new peer is due (see core/contact.py)."""
        now = time.monotonic()
        before = self.applied or {}
        own = decode_key(self.public_key)
        for key in netmap.peers.keys() - before.keys():
            if not initiates(own, decode_key(key)):
                self.contact.add(key, now)
        self.contact.keep_only(netmap.peers)
        reset: set[str] = set()
        due = self.contact.next_due()
        if due is not None and due <= now:
            status = self.backend.status().peers
            reset = set(self.contact.due(
                now, lambda k: k in status and status[k].last_handshake > 0))
        holding = self.contact.holding
        want = desired_peers(
            netmap, self.extra_allowed,
            keepalive=lambda k: 0 if holding(k) else KEEPALIVE_S,
            endpoint=lambda p: None if holding(p.public_key) else self.endpoint(p))
        if self.applied is None:
            # First write after start: replace whatever a previous run left on the device.
            self.backend.set_peers(list(want.values()), [], replace_all=True)
            upserts, removes = len(want), 0
        else:
            # A re-created peer (reset) starts with a fresh handshake state.
            up = [p for k, p in want.items() if self.applied.get(k) != p or k in reset]
            rm = [k for k in self.applied if k not in want or k in reset]
            self.backend.set_peers(up, rm)
            upserts, removes = len(up), len(rm)
        self.applied, self.netmap = want, netmap
        log.info("applied netmap version=%d peers=%d upserts=%d removes=%d first_contact=%d",
                 netmap.version, len(want), upserts, removes, len(reset))

    def close(self) -> None:
        try:
            nft.remove()
        finally:
            self.backend.close()
