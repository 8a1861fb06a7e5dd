"""Which installed peers are idle, and the poller that tells.

A peer counts as active at its install, at every authenticated initiation the sniffer sees
from it, at every handshake wireguard-go reports, and whenever its received-bytes counter
moved between two status polls. Idle longer than the TTL means evicted; the active set is
also capped, the least recently active going first to make room.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from wiremesh.gateway.admission import Install
from wiremesh.wg.backend import WgBackend, WgError, WgPeerStatus
from wiremesh.wg.keys import decode_key

log = logging.getLogger("wiremesh.gateway")


@dataclass
class ActivePeer:
    allowed_ips: tuple[str, ...]
    endpoint: str
    last_activity: float
    rx_bytes: int = 0


@dataclass(frozen=True)
class StatusSnapshot:
    peers: dict[str, WgPeerStatus]  # as parsed from UAPI: base64 key -> status
    at: float


class ActiveSet:
    """Installed peers, least recently active first. Owned by the provisioner thread;
    other threads only ask `key in active_set`."""

    def __init__(self, ttl: float, max_active: int) -> None:
        if ttl <= 0 or max_active < 1:
            raise ValueError("ttl must be positive and max_active at least 1")
        self.ttl = ttl
        self.max_active = max_active
        self.peers: OrderedDict[bytes, ActivePeer] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        return key in self.peers

    def __len__(self) -> int:
        return len(self.peers)

    def touch(self, key: bytes, at: float) -> None:
        peer = self.peers.get(key)
        if peer is not None and at > peer.last_activity:
            peer.last_activity = at
            self.peers.move_to_end(key)

    def observe(self, snapshot: StatusSnapshot) -> None:
        for b64, status in snapshot.peers.items():
            key = decode_key(b64)
            peer = self.peers.get(key)
            if peer is None:
                continue
            if status.rx_bytes != peer.rx_bytes:
                peer.rx_bytes = status.rx_bytes
                self.touch(key, snapshot.at)
            self.touch(key, status.last_handshake)

    def relocate(self, key: bytes, endpoint: str) -> str | None:
        """Record a new endpoint for an installed peer; returns the old one if it changed."""
        peer = self.peers.get(key)
        if peer is None or peer.endpoint == endpoint:
            return None
        old, peer.endpoint = peer.endpoint, endpoint
        return old

    def take_idle(self, now: float) -> dict[bytes, ActivePeer]:
        idle = [k for k, p in self.peers.items() if now - p.last_activity > self.ttl]
        return {k: self.peers.pop(k) for k in idle}

    def admit(self, installs: list[Install],
              now: float) -> tuple[list[Install], dict[bytes, ActivePeer]]:
        """Add new peers (deduplicated); returns them and the peers pushed out by the cap."""
        fresh: dict[bytes, Install] = {}
        for ins in installs:
            if ins.public_key not in self.peers and ins.public_key not in fresh:
                fresh[ins.public_key] = ins
        new = list(fresh.values())[: self.max_active]
        overflow = len(self.peers) + len(new) - self.max_active
        victims = {}
        while overflow > 0:
            key, peer = self.peers.popitem(last=False)
            victims[key] = peer
            overflow -= 1
        for ins in new:
            self.peers[ins.public_key] = ActivePeer(ins.allowed_ips, ins.endpoint, now)
        return new, victims


class StatusPoller:
    """Reads wireguard-go's status every `interval` and hands it to `sink` (the provisioner).

    Its own thread, because a `get` over tens of thousands of peers takes a while and must not
    stall the sniffer or the installs.
    """

    def __init__(self, backend: WgBackend, sink: Callable[[StatusSnapshot], object],
                 interval: float) -> None:
        self.backend = backend
        self.sink = sink
        self.interval = interval

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                status = self.backend.status()
            except WgError as e:
                log.warning("event=status_failed error=%s", e)
                continue
            self.sink(StatusSnapshot(status.peers, time.time()))
