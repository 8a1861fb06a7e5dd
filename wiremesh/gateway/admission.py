"""Decide what one sniffed handshake initiation means: install a peer, note activity, or drop.

The checks run cheapest first, so what a stranger can make the gateway spend is bounded:
  1. shape (148 bytes, type 1)                       - free
  2. mac1 keyed by the gateway's public key           - one BLAKE2s; random floods stop here
  3. negative cache of handshakes already refused     - replayed junk costs no DH
  4. load: the source's token bucket, its strikes, then the global DH budget - dict
     operations. When one is empty the gateway is under load for this packet: without a valid
     mac2 it gets a cookie reply (cookie.py; at most the source's rate of them) and no DH;
     with one (its source address is proven) it goes on, limited by a second per-source
     bucket for proven sources only, so spoofed floods cannot use it up. A source has spent
     its strikes when a few of its initiations in a row named unknown keys or did not
     decrypt: a flood of fresh strangers from a few addresses then costs a few DH per
     address, not one per packet, and the DH budget and the admitting thread stay for the
     clients, which never make strikes (their keys are known)
  5. first DH: decrypt the initiator's static key, look it up (negative cache, then SQLite,
     one query for all the initiations read in one go)
  6. second DH: decrypt the TAI64N timestamp; only this proves the sender holds the key
  7. replay: the timestamp must be newer than the newest accepted for that key
Every table touched before step 6 is a bounded LRU (see ratelimit.py).

The store may be locked by another process (an import) or fail: the gateway never stops for
it. A lookup that fails drops that initiation (counted as `store_unavailable`; the client
retries) and the store is left alone for a backoff period; accepted timestamps stay in memory
until a write succeeds. When another connection commits (an import ends), the cache of unknown
keys is cleared, so a peer imported a moment ago gets in at its next initiation.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from wiremesh.gateway import noise
from wiremesh.gateway.backoff import Backoff
from wiremesh.gateway.cookie import CookieChecker
from wiremesh.gateway.ratelimit import ExpiringLru, TokenBucket, TokenBucketTable
from wiremesh.gateway.store import KnownPeer, KnownPeerStore, StoreUnavailable

log = logging.getLogger("wiremesh.gateway")


@dataclass(frozen=True)
class Install:
    public_key: bytes
    allowed_ips: tuple[str, ...]
    endpoint: str
    sniffed_at: float


@dataclass(frozen=True)
class Seen:
    """An authenticated initiation from a peer that is already installed."""

    public_key: bytes
    at: float
    endpoint: str


@dataclass(frozen=True)
class Drop:
    reason: str


@dataclass(frozen=True)
class CookieReply:
    """Under load, no DH: send `packet` back to the initiation's source from the listen port.
    `reason` is the limit that was hit: `dh_budget`, `rate_limited` or `strikes`."""

    packet: bytes
    reason: str


Verdict = Install | Seen | Drop | CookieReply
# The verdicts a flood gets most, made once: one per packet cost a frozen dataclass's
# __init__ each.
_RATE_LIMITED = Drop("rate_limited")
_MALFORMED, _BAD_MAC1, _REFUSED_AGAIN = Drop("malformed"), Drop("bad_mac1"), Drop("refused_again")


@dataclass(frozen=True)
class _Opened:
    """An initiation past its first DH, waiting for its key's lookup."""

    pending: noise.PendingTimestamp
    handshake_id: bytes
    src_addr: bytes
    src_port: int


@dataclass(frozen=True)
class AdmissionLimits:
    rate_per_source: float = 20.0
    burst_per_source: float = 40.0
    sources_tracked: int = 65_536
    negative_cache_size: int = 65_536
    negative_cache_ttl: float = 60.0
    # Initiations of one source that may fail (unknown key, no decrypt) before its next ones
    # need a mac2; one is forgiven every `strike_forgiven_s`. A client retrying with a key
    # revoked a moment ago makes one every 5 s; a flood of 10,000 strangers from 128
    # addresses made one per packet and held real clients 2 s in the tap's queue.
    strikes_per_source: float = 3.0
    strike_forgiven_s: float = 20.0
    # Initiations given a Diffie-Hellman per second, all sources together. It must cover the
    # installs the gateway is to serve (3,000/s) and its active peers' rekeys (each one every
    # 2 minutes: 100,000 active -> 833/s), and stay below what the admitting thread verifies
    # on one core (a known key's initiation costs it 0.2-0.25 ms of CPU: 4,000-5,000/s), so a
    # flood beyond it gets cookie replies instead of a backlog.
    dh_per_second: float = 4000.0
    dh_burst: float = 4000.0
    # Accepted timestamps are written to the store in batches, at least this often.
    timestamp_flush_interval: float = 0.5


def source_key(addr: bytes) -> bytes:
    """Rate-limit identity: an IPv4 address, or an IPv6 /64 (one subscriber's usual share)."""
    return addr if len(addr) == 4 else addr[:8]


def format_endpoint(addr: bytes, port: int) -> str:
    """In canonical form (what check_endpoint returns); IPv4 without ipaddress, which takes
    longer than the rest of an install's bookkeeping."""
    if len(addr) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, addr)}:{port}"
    return f"[{ipaddress.IPv6Address(addr)}]:{port}"


class Admission:
    def __init__(
        self,
        responder: noise.Responder,
        store: KnownPeerStore,
        is_active: Callable[[bytes], bool],
        limits: AdmissionLimits = AdmissionLimits(),
    ) -> None:
        self.responder = responder
        self.store = store
        self.is_active = is_active
        self.limits = limits
        self.buckets = TokenBucketTable(
            limits.rate_per_source, limits.burst_per_source, limits.sources_tracked
        )
        self.proven_buckets = TokenBucketTable(
            limits.rate_per_source, limits.burst_per_source, limits.sources_tracked
        )
        self.dh_budget = TokenBucket(limits.dh_per_second, limits.dh_burst)
        self.strikes = TokenBucketTable(
            1.0 / limits.strike_forgiven_s, limits.strikes_per_source, limits.sources_tracked
        )
        self.cookie_buckets = TokenBucketTable(
            limits.rate_per_source, limits.burst_per_source, limits.sources_tracked
        )
        self.cookies = CookieChecker(responder.public_key)
        # Plain counts, exported by the caller: X25519 operations done, and initiations let
        # through under load because their mac2 proved the source.
        self.dh_operations = 0
        self.proven = 0
        self.refused = ExpiringLru(limits.negative_cache_size, limits.negative_cache_ttl)
        self.unknown_keys = ExpiringLru(limits.negative_cache_size, limits.negative_cache_ttl)
        self._stamps: dict[bytes, bytes] = {}
        self._last_flush = 0.0
        # Reads go on while another process holds the write lock (WAL): separate backoffs.
        self.read_backoff = Backoff()
        self.write_backoff = Backoff()

    def handle(self, payload: bytes, src_addr: bytes, src_port: int, now: float) -> Verdict:
        return self.handle_batch([(payload, src_addr, src_port)], now)[0]

    def handle_batch(self, packets: Sequence[tuple[bytes, bytes, int]],
                     now: float) -> list[Verdict]:
        """Verdicts for (payload, source address, source port) initiations, in order.

        The keys of the whole batch are looked up in one query: each SQLite call gives up
        the GIL, and winning it back from the provisioner's thread cost more than the
        lookup itself."""
        verdicts: list[Verdict | _Opened] = [self._open(p, a, port, now) for p, a, port in packets]
        opened = [v for v in verdicts if isinstance(v, _Opened)]
        if not opened:
            return verdicts  # type: ignore[return-value]  # no _Opened left
        wanted = {o.pending.initiator_static for o in opened
                  if not self.unknown_keys.fresh(o.pending.initiator_static, now)}
        try:
            known = self.store.lookup_many(wanted) if wanted else {}
        except StoreUnavailable as e:
            self._store_failed(self.read_backoff, "lookup", e, now)
            return [Drop("store_unavailable") if isinstance(v, _Opened) else v
                    for v in verdicts]
        if wanted:
            self._store_ok(self.read_backoff, "lookup")
        return [self._admit(v, known.get(v.pending.initiator_static), now)
                if isinstance(v, _Opened) else v for v in verdicts]

    def _open(self, payload: bytes, src_addr: bytes, src_port: int,
              now: float) -> Verdict | _Opened:
        """Everything up to the first DH: a verdict, or the initiator's key to look up."""
        try:
            msg = noise.parse_initiation(payload)
        except noise.MalformedPacket:
            return _MALFORMED
        if not self.responder.check_mac1(payload):
            return _BAD_MAC1
        handshake_id = payload[8:88]  # ephemeral + encrypted static: unique per attempt
        if self.refused.fresh(handshake_id, now):
            return _REFUSED_AGAIN
        if not self.read_backoff.ready(now):
            return Drop("store_unavailable")
        source = source_key(src_addr)
        if (limit := self._load_limit(source, now)) is not None:
            if not self.cookies.check_mac2(payload, src_addr, src_port, now):
                if not self.cookie_buckets.allow(source, now):
                    return _RATE_LIMITED
                return CookieReply(self.cookies.reply(payload, src_addr, src_port, now), limit)
            if not self.proven_buckets.allow(source, now):
                return _RATE_LIMITED
            self.proven += 1
        self.dh_operations += 1
        try:
            pending = self.responder.open_static(msg)
        except noise.DecryptFailed:
            return self._refuse(handshake_id, source, "decrypt", now)
        return _Opened(pending, handshake_id, src_addr, src_port)

    def _refuse(self, handshake_id: bytes, source: bytes, reason: str, now: float) -> Drop:
        """An initiation that failed past its first DH: never again, and a strike for its
        source."""
        self.refused.add(handshake_id, now)
        self.strikes.allow(source, now)
        return Drop(reason)

    def _admit(self, o: _Opened, known: KnownPeer | None, now: float) -> Verdict:
        """The second DH and the replay check for a key the store knows."""
        key = o.pending.initiator_static
        if known is None:
            self.unknown_keys.add(key, now)
            return self._refuse(o.handshake_id, source_key(o.src_addr), "unknown_key", now)
        self.dh_operations += 1
        try:
            ts = self.responder.open_timestamp(o.pending)
        except noise.DecryptFailed:
            return self._refuse(o.handshake_id, source_key(o.src_addr), "decrypt", now)
        newest = max(self._stamps.get(key, b""), known.last_timestamp or b"")
        if ts <= newest:
            return Drop("replay")
        self._stamps[key] = ts
        endpoint = format_endpoint(o.src_addr, o.src_port)
        if self.is_active(key):
            return Seen(key, now, endpoint)
        return Install(key, known.allowed_ips, endpoint, now)

    def _load_limit(self, source: bytes, now: float) -> str | None:
        """The limit this initiation hits, or None when it may have its DH."""
        if not self.buckets.allow(source, now):
            return "rate_limited"
        if self.strikes.empty(source, now):
            return "strikes"
        if not self.dh_budget.allow(now):
            return "dh_budget"
        return None

    def maybe_flush(self, now: float) -> None:
        """Persist accepted timestamps and notice imports; call between packets (cheap when
        nothing is due)."""
        if now - self._last_flush < self.limits.timestamp_flush_interval:
            return
        if self.read_backoff.ready(now):
            try:
                if self.store.changed():
                    self.unknown_keys.clear()
            except StoreUnavailable as e:
                self._store_failed(self.read_backoff, "data_version", e, now)
        if self.write_backoff.ready(now):
            self.flush(now)

    def flush(self, now: float) -> None:
        """Write accepted timestamps; on failure they stay queued for the next flush."""
        self._last_flush = now
        if not self._stamps:
            return
        try:
            self.store.record_timestamps(self._stamps)
        except StoreUnavailable as e:
            self._store_failed(self.write_backoff, "record_timestamps", e, now)
            return
        self._store_ok(self.write_backoff, "record_timestamps")
        self._stamps = {}

    @staticmethod
    def _store_failed(backoff: Backoff, op: str, error: StoreUnavailable, now: float) -> None:
        delay = backoff.failed(now)
        log.warning("event=store_unavailable op=%s failures=%d retry_in_s=%.1f error=%s",
                    op, backoff.failures, delay, error)

    @staticmethod
    def _store_ok(backoff: Backoff, op: str) -> None:
        if failures := backoff.succeeded():
            log.info("event=store_available op=%s after_failures=%d", op, failures)
