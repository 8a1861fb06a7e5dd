"""A running JIT gateway: wireguard-go device, tap, guard, admission, provisioner, poller,
metrics.

Threads: the caller's thread sniffs and admits (all the per-packet crypto), one thread writes
to wireguard-go and the guard, one polls wireguard-go's status. They share nothing but a queue
and the active set.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wiremesh.gateway.admission import Admission, AdmissionLimits, CookieReply, Drop
from wiremesh.gateway.backoff import Backoff
from wiremesh.gateway.evictor import ActiveSet, StatusPoller
from wiremesh.gateway.guard import HandshakeGuard
from wiremesh.gateway.metrics import GatewayMetrics
from wiremesh.gateway.noise import Responder
from wiremesh.gateway.provisioner import Provisioner
from wiremesh.gateway.sender import UdpSender
from wiremesh.gateway.sniffer import InitiationTap
from wiremesh.gateway.store import KnownPeerStore, StoreUnavailable
from wiremesh.gateway.sync import KnownPeerSync, SyncConfig
from wiremesh.netlink.addresses import ensure_address
from wiremesh.wg.keys import decode_key, public_key_of
from wiremesh.wg.uapi import WireguardGoBackend

log = logging.getLogger("wiremesh.gateway")

# The sniffer thread waits at most this long for the store's write lock, then backs off.
STORE_BUSY_TIMEOUT_S = 0.05
# The sniffer gives up the GIL in every SQLite lookup and UAPI read; with Python's default
# 5 ms switch interval it then waits for the provisioner's or poller's Python work to hit
# that interval, which cut the install rate in half. Shorter slices hand it back sooner.
SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class GatewayConfig:
    private_key: str  # base64
    db: Path
    address: str  # the gateway's overlay address with prefix, e.g. 100.64.0.1/10
    ifname: str = "wmgw0"
    listen_port: int = 51820
    ttl: float = 300.0
    max_active: int = 100_000
    poll_interval: float | None = None  # default: a quarter of the TTL, within [0.25, 30] s
    capture_ifname: str | None = None  # None = every interface of the namespace
    metrics_listen: tuple[str, int] | None = None
    guard: bool = True  # nftables: keep initiations the gateway did not admit from wireguard-go
    sync: SyncConfig | None = None  # follow the server's known-peer feed into `db`
    limits: AdmissionLimits = field(default_factory=AdmissionLimits)

    @property
    def effective_poll_interval(self) -> float:
        if self.poll_interval is not None:
            return self.poll_interval
        return min(30.0, max(0.25, self.ttl / 4))


def run_gateway(cfg: GatewayConfig, stop: threading.Event,
                on_ready: Callable[[dict], None] | None = None) -> None:
    """Serve until `stop` is set; tears everything down on the way out."""
    iface = ipaddress.ip_interface(cfg.address)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    opened = _open_store(cfg.db, stop)
    if opened is None:
        return
    store, known = opened
    metrics = GatewayMetrics()
    metrics.known.set(known)
    backend = WireguardGoBackend(cfg.ifname)
    threads: list[threading.Thread] = []
    tap = admission = guard = sender = None
    try:
        backend.set_device(cfg.private_key, cfg.listen_port)
        backend.set_peers([], [], replace_all=True)
        ensure_address(cfg.ifname, str(iface.ip), iface.network.prefixlen)
        tap = InitiationTap(cfg.listen_port, cfg.capture_ifname)
        sender = UdpSender()
        guard = HandshakeGuard(cfg.listen_port) if cfg.guard else None
        active = ActiveSet(cfg.ttl, cfg.max_active)
        prov = Provisioner(backend, active, metrics, guard)
        poller = StatusPoller(backend, prov.submit, cfg.effective_poll_interval)
        admission = Admission(Responder(decode_key(cfg.private_key)), store, prov.is_active,
                              cfg.limits)
        targets = [prov.run, poller.run]
        if cfg.sync is not None:
            targets.append(KnownPeerSync(cfg.sync, cfg.db, metrics, prov.revoke).run)
        for target in targets:
            t = threading.Thread(target=target, args=(stop,), daemon=True)
            t.start()
            threads.append(t)
        if cfg.metrics_listen:
            metrics.serve(*cfg.metrics_listen)
        ready = {"event": "ready", "public_key": public_key_of(cfg.private_key),
                 "ifname": cfg.ifname, "listen_port": cfg.listen_port,
                 "known_peers": known}
        log.info("%s", json.dumps(ready))
        if on_ready:
            on_ready(ready)
        _sniff_loop(tap, sender, cfg.listen_port, admission, prov, metrics, stop)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        if admission is not None:
            admission.flush(time.time())
        if tap is not None:
            tap.close()
        if sender is not None:
            sender.close()
        if guard is not None:
            guard.close()
        backend.close()
        store.close()
        metrics.close()


def _open_store(path: Path, stop: threading.Event) -> tuple[KnownPeerStore, int] | None:
    """The store and its size, retried with backoff while it is locked; None if stopped."""
    backoff = Backoff(initial=0.2)
    while True:
        try:
            store = KnownPeerStore(path, busy_timeout=STORE_BUSY_TIMEOUT_S)
        except StoreUnavailable as e:
            error = e
        else:
            try:
                return store, store.count()
            except StoreUnavailable as e:
                store.close()
                error = e
        delay = backoff.failed(time.monotonic())
        log.warning("event=store_unavailable op=open failures=%d retry_in_s=%.1f error=%s",
                    backoff.failures, delay, error)
        if stop.wait(delay):
            return None


def _sniff_loop(tap: InitiationTap, sender: UdpSender, port: int, admission: Admission,
                prov: Provisioner, metrics: GatewayMetrics, stop: threading.Event) -> None:
    dropped = metrics.dropped
    dh_seen = proven_seen = stale_seen = 0
    while not stop.is_set():
        captured = tap.read(0.2)
        dropped.labels("stale").inc(tap.stale - stale_seen)
        metrics.initiations.inc(len(captured) + tap.stale - stale_seen)
        stale_seen = tap.stale
        verdicts = admission.handle_batch(
            [(cap.payload, cap.src_addr, cap.src_port) for cap in captured], time.time())
        # Counted per batch: a metric's labels() per packet was 4 % of the CPU under a flood.
        drops: Counter[str] = Counter()
        cookies: Counter[str] = Counter()
        for cap, verdict in zip(captured, verdicts, strict=True):
            if isinstance(verdict, Drop):
                drops[verdict.reason] += 1
            elif isinstance(verdict, CookieReply):
                try:
                    sender.send(verdict.packet, cap.dst_addr, port, cap.src_addr, cap.src_port)
                except OSError as e:
                    drops["cookie_send_failed"] += 1
                    log.debug("event=cookie_send_failed error=%s", e)
                else:
                    cookies[verdict.reason] += 1
            elif not prov.submit(verdict):
                drops["queue_full"] += 1
        for reason, n in drops.items():
            dropped.labels(reason).inc(n)
        for reason, n in cookies.items():
            metrics.cookie_replies.labels(reason).inc(n)
        metrics.dh_operations.inc(admission.dh_operations - dh_seen)
        metrics.cookie_proven.inc(admission.proven - proven_seen)
        dh_seen, proven_seen = admission.dh_operations, admission.proven
        admission.maybe_flush(time.time())
