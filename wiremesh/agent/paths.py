"""Direct or relayed, per peer: path probes from the WireGuard port (core/disco.py), the
state machine deciding on them (core/paths.py), and the relay link for the peers that need it.

Both sides of a pair start probing the moment their netmaps name each other, and the server
pushes both netmaps together, so their probes leave at about the same time and open the
NATs between them for each other (hole punching); relayed peers retry at wall-clock aligned
moments. A ping is answered with a pong to wherever it came from, and that source is probed
back (a NAT that picks a new port per destination is reachable only there). The first answer
decides the direct endpoint, which is written to WireGuard like any other change: only the
endpoint moves, so the WireGuard session survives every switch between direct and relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from wiremesh.agent import metrics
from wiremesh.agent.dataplane import first_endpoint
from wiremesh.agent.portside import PortSide
from wiremesh.agent.relay_link import RelayLink
from wiremesh.core import disco
from wiremesh.core.exitnode import tunnelled
from wiremesh.core.paths import Mode, PathTable
from wiremesh.core.wire import Netmap, NetmapPeer, endpoint_host_port
from wiremesh.wg.backend import WgPeerStatus
from wiremesh.wg.keys import decode_key, encode_key, public_key_of

log = logging.getLogger("wiremesh.agent.paths")
MAX_OUTSTANDING = 4096


def _split(endpoint: str) -> tuple[str, int]:
    host, port = endpoint_host_port(endpoint)
    return host, port or 0


def _join(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class PathManager:
    def __init__(self, side: PortSide, private_key: str, relay: RelayLink | None,
                 on_change: Callable[[], Awaitable[None]]) -> None:
        self.side, self.relay, self.on_change = side, relay, on_change
        self.private = decode_key(private_key)
        self.public = decode_key(public_key_of(private_key))
        self.table = PathTable(relay=relay is not None)
        self.link_keys: dict[bytes, bytes] = {}  # peer's raw public key -> probe key
        self.outstanding: dict[bytes, str] = {}  # ping txid -> peer key
        self._wake = asyncio.Event()
        self._changed = False
        side.on_probe = self._on_probe

    # --- inputs -------------------------------------------------------------------------

    def set_netmap(self, netmap: Netmap) -> None:
        raw = {decode_key(k): k for k in netmap.peers}
        self.link_keys = {r: self.link_keys.get(r) or disco.link_key(self.private, r)
                          for r in raw}
        self.table.set_peers(
            {k: [e for e in p.endpoints if endpoint_host_port(e)[1] is not None]
             for k, p in netmap.peers.items()}, time.monotonic(), tunnelled(netmap))
        if self.relay is not None:
            for key in set(self.relay.peers) - set(netmap.peers):
                self.relay.release(key)
        self._wake.set()

    def rebind(self) -> None:
        """Our own candidates changed (roaming, NAT rebinding): find every path again."""
        self.table.rebind(time.monotonic())
        self._wake.set()

    # --- what WireGuard uses ------------------------------------------------------------

    def endpoint(self, peer: NetmapPeer) -> str | None:
        """DataPlane's endpoint hook."""
        ep = self.table.direct_endpoint(peer.public_key)
        if ep is not None:
            return ep
        # Called from the data plane's worker thread: only a loopback socket that run()
        # already made on the event loop may be used here (making one registers a reader).
        if self.relay is not None and peer.public_key in self.relay.peers:
            return self.relay.endpoint(peer.public_key)
        return first_endpoint(peer)

    def report(self, wg: dict[str, WgPeerStatus]) -> list[dict[str, Any]]:
        """Per peer: its path, the WireGuard endpoint in use (direct only) and the last
        handshake, as the server's path report takes them."""
        out = []
        for key, p in sorted(self.table.peers.items()):
            st = wg.get(key)
            path = "relayed" if p.relayed else "direct" if p.mode == Mode.DIRECT else "probing"
            out.append({"peer": key, "path": path,
                        "endpoint": st.endpoint if st and path != "relayed" else None,
                        "last_handshake": st.last_handshake if st and st.last_handshake
                        else None})
        return out

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            probes, changes = self.table.tick(time.monotonic(), time.time())
            for key, endpoints in probes:
                self._ping(key, endpoints)
            for c in changes:
                log.info("peer %s: %s", c.key[:8], c.mode.value)
                if c.mode == Mode.RELAY and self.relay is not None:
                    # The loopback socket is made here, on the loop: the data plane only
                    # reads its address (from a worker thread).
                    self.relay.endpoint(c.key)
            self._export()
            if changes or self._changed:
                self._changed = False
                await self.on_change()
            due = self.table.next_due()
            self._wake.clear()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _export(self) -> None:
        counts = self.table.counts()
        relayed = sum(1 for p in self.table.peers.values() if p.relayed)
        metrics.PATHS.labels("direct").set(counts["direct"])
        metrics.PATHS.labels("relayed").set(relayed)
        metrics.PUNCH_ATTEMPTS.set(self.table.attempts)
        metrics.PUNCH_SUCCESSES.set(self.table.successes)
        if self.relay is not None:
            for key, p in self.table.peers.items():
                if not p.relayed and key in self.relay.peers and p.endpoint is not None:
                    self.relay.release(key)

    def _ping(self, key: str, endpoints: list[str]) -> None:
        link = self.link_keys.get(decode_key(key))
        if link is None:
            return
        if len(self.outstanding) > MAX_OUTSTANDING:
            self.outstanding.clear()  # answers that never came
        for ep in endpoints:
            txid = os.urandom(disco.TXID_LEN)
            self.outstanding[txid] = key
            self.side.send(disco.encode(disco.PING, self.public, txid, link), _split(ep))

    def _on_probe(self, payload: bytes, ip: str, port: int) -> None:
        try:
            sender = disco.peek_sender(payload)
            link = self.link_keys.get(sender)
            if link is None:
                return  # not a peer of ours: no answer
            probe = disco.decode(payload, link)
        except disco.DiscoError as e:
            log.debug("dropped a probe from %s:%d: %s", ip, port, e)
            return
        key, src = encode_key(sender), _join(ip, port)
        if probe.kind == disco.PING:
            self.side.send(disco.encode(disco.PONG, self.public, probe.txid, link), (ip, port))
            now = time.monotonic()
            self.table.pinged(key, now)
            if self.table.probed_from(key, src, now):
                self.table.peers[key].next_probe = now
            self._wake.set()
        elif self.outstanding.pop(probe.txid, None) == key:
            before = self.table.direct_endpoint(key)
            if self.table.answered(key, src, time.monotonic()) is not None:
                if before != src:
                    log.info("peer %s: direct via %s", key[:8], src)
                self._changed = True
                self._wake.set()
