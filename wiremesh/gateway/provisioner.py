"""The one writer to wireguard-go: installs, activity and evictions, batched into UAPI writes.

The sniffer and the status poller post messages; this thread drains whatever has queued up
and applies it in one `set=1` write, so a burst of 10,000 handshakes costs a handful of writes
and a lone handshake is written the moment it arrives (no batching delay when idle).

Making the client's handshake complete at once: by the time the gateway has decrypted the
initiation, wireguard-go has already dropped it (the peer was unknown), and the client would
only retry after its 5 s rekey timeout. So each new peer is installed with the endpoint the
initiation came from and a persistent keepalive, immediately followed - in the same write - by
the same peer with the keepalive off. Switching the keepalive on makes wireguard-go send a
keepalive right away, which needs a session, so the gateway initiates the handshake itself;
the client answers, the gateway's queued keepalive confirms the session, and the client's
staged packets flow: one round trip after the install instead of five seconds. Switching it
off again leaves no periodic traffic that would keep an idle peer from being evicted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from wiremesh.gateway.admission import Install, Seen
from wiremesh.gateway.evictor import ActivePeer, ActiveSet, StatusSnapshot
from wiremesh.gateway.guard import GuardError, HandshakeGuard
from wiremesh.gateway.metrics import GatewayMetrics
from wiremesh.wg.backend import WgBackend, WgError, WgPeerConfig
from wiremesh.wg.keys import encode_key

log = logging.getLogger("wiremesh.gateway")

KICK_KEEPALIVE_S = 25
# An install the sniffer decided on just before a revocation reached the cache must not
# bring the peer back: installs of keys revoked this recently are refused.
REVOKED_HOLD_S = 5.0


@dataclass(frozen=True)
class Revoke:
    """Keys the server no longer lets in: remove them at once if installed."""

    keys: tuple[bytes, ...]
    at: float


Message = Install | Seen | StatusSnapshot | Revoke


def install_configs(installs: list[Install]) -> list[WgPeerConfig]:
    """Two UAPI blocks per peer: keepalive on (kicks a handshake), then off."""
    out = []
    for ins in installs:
        kick = WgPeerConfig(encode_key(ins.public_key), ins.allowed_ips, ins.endpoint,
                            KICK_KEEPALIVE_S)
        out += [kick, kick.with_keepalive(0)]
    return out


class Provisioner:
    def __init__(self, backend: WgBackend, active: ActiveSet, metrics: GatewayMetrics,
                 guard: HandshakeGuard | None = None, queue_size: int = 65_536,
                 max_batch: int = 8192) -> None:
        self.backend = backend
        self.active = active
        self.metrics = metrics
        self.guard = guard
        self.max_batch = max_batch
        self.inbox: queue.Queue[Message] = queue.Queue(queue_size)
        self._retry_removals: dict[bytes, ActivePeer] = {}
        self._revoked: dict[bytes, float] = {}

    def is_active(self, key: bytes) -> bool:
        return key in self.active

    def revoke(self, keys: list[bytes]) -> None:
        """Blocking (a revocation is never dropped for a full queue)."""
        self.inbox.put(Revoke(tuple(keys), time.time()))

    def submit(self, msg: Message) -> bool:
        """Non-blocking; False when the queue is full (the caller counts a drop)."""
        try:
            self.inbox.put_nowait(msg)
        except queue.Full:
            return False
        return True

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                batch = [self.inbox.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            self.apply(batch)

    def apply(self, batch: list[Message]) -> None:
        now = time.time()
        installs: list[Install] = []
        idle: dict[bytes, ActivePeer] = {}
        moved_from: list[str] = []
        moved_to: list[str] = []
        revoked: dict[bytes, ActivePeer] = {}
        self._revoked = {k: t for k, t in self._revoked.items() if now - t < REVOKED_HOLD_S}
        for msg in batch:
            if isinstance(msg, Revoke):
                for key in msg.keys:
                    self._revoked[key] = msg.at
                    if (peer := self.active.peers.pop(key, None)) is not None:
                        revoked[key] = peer
                installs = [i for i in installs if i.public_key not in self._revoked]
            elif isinstance(msg, Install):
                if msg.public_key not in self._revoked:
                    installs.append(msg)
            elif isinstance(msg, Seen):
                self.active.touch(msg.public_key, msg.at)
                old = self.active.relocate(msg.public_key, msg.endpoint)
                if old is not None:
                    moved_from.append(old)
                    moved_to.append(msg.endpoint)
            else:
                self.active.observe(msg)
                idle |= self.active.take_idle(now)
        new, capped = self.active.admit(installs, now)
        removals = self._retry_removals | idle | capped | revoked
        if new or removals:
            if not self._write(new, removals):
                return
            self._count(new, idle, capped)
            self.metrics.revoked.inc(len(revoked))
        self._guard([i.endpoint for i in new] + moved_to,
                    [p.endpoint for p in removals.values()] + moved_from)

    def _write(self, new: list[Install], removals: dict[bytes, ActivePeer]) -> bool:
        started = time.monotonic()
        try:
            self.backend.set_peers(install_configs(new), [encode_key(k) for k in removals])
        except WgError as e:
            # wireguard-go applies a write line by line, so part of it may have landed:
            # forget the installs (the clients' retries bring them back) and remove again
            # next time (removing an absent peer is a no-op).
            for ins in new:
                self.active.peers.pop(ins.public_key, None)
            self._retry_removals = removals
            self.metrics.uapi_errors.inc()
            self.metrics.active.set(len(self.active))
            log.error("event=uapi_write_failed installs=%d removals=%d error=%s",
                      len(new), len(removals), e)
            return False
        self._retry_removals = {}
        log.info("event=uapi_write installed=%d removed=%d active=%d ms=%.1f",
                 len(new), len(removals), len(self.active), (time.monotonic() - started) * 1000)
        return True

    def _count(self, new: list[Install], idle: dict, capped: dict) -> None:
        done = time.time()
        for ins in new:
            self.metrics.install_latency.observe(max(0.0, done - ins.sniffed_at))
        self.metrics.installed.inc(len(new))
        if new:
            self.metrics.last_install.set(done)
        self.metrics.evicted.labels("ttl").inc(len(idle))
        self.metrics.evicted.labels("cap").inc(len(capped))
        self.metrics.active.set(len(self.active))

    def _guard(self, add: list[str], remove: list[str]) -> None:
        if self.guard is None or not (add or remove):
            return
        try:
            self.guard.update(add, remove)
        except GuardError as e:
            self.metrics.guard_errors.inc()
            log.error("event=guard_update_failed error=%s", e)
