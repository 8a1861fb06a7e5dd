"""Admission of sniffed initiations: install, activity, replay, strangers and floods."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiremesh.core.wire import check_endpoint, endpoint_host_port
from wiremesh.gateway import cookie, noise
from wiremesh.gateway.admission import (
    Admission,
    AdmissionLimits,
    CookieReply,
    Drop,
    Install,
    Seen,
    format_endpoint,
)
from wiremesh.gateway.store import KnownPeer, KnownPeerStore, StoreUnavailable

GW_PRIV = bytes(range(10, 42))
CLIENT_PRIV = bytes(range(50, 82))
SRC = bytes([198, 51, 100, 7])


@pytest.fixture
def store(tmp_path: Path) -> KnownPeerStore:
    s = KnownPeerStore(tmp_path / "peers.db")
    s.import_peers([(noise.public_key(CLIENT_PRIV), "100.64.0.2/32")])
    yield s
    s.close()


def make(store: KnownPeerStore, active: set[bytes] | None = None, **limits: float) -> Admission:
    act = active if active is not None else set()
    return Admission(noise.Responder(GW_PRIV), store, act.__contains__, AdmissionLimits(**limits))


def initiation(priv: bytes = CLIENT_PRIV, at: float = 1000.0) -> bytes:
    return noise.create_initiation(priv, noise.public_key(GW_PRIV), timestamp=noise.tai64n(at))


def test_known_key_installs_with_source_endpoint(store: KnownPeerStore) -> None:
    v = make(store).handle(initiation(), SRC, 40000, now=1.0)
    assert v == Install(noise.public_key(CLIENT_PRIV), ("100.64.0.2/32",), "198.51.100.7:40000",
                        1.0)


def test_ipv6_endpoint_is_bracketed(store: KnownPeerStore) -> None:
    src = bytes.fromhex("fd000000000000000000000000000001")
    v = make(store).handle(initiation(), src, 51000, now=1.0)
    assert isinstance(v, Install) and v.endpoint == "[fd00::1]:51000"


def test_replayed_or_older_timestamp_is_dropped(store: KnownPeerStore) -> None:
    adm = make(store)
    packet = initiation(at=1000.0)
    assert isinstance(adm.handle(packet, SRC, 1, now=1.0), Install)
    assert adm.handle(packet, SRC, 1, now=2.0) == Drop("replay")
    assert adm.handle(initiation(at=999.0), SRC, 1, now=3.0) == Drop("replay")
    assert isinstance(adm.handle(initiation(at=1001.0), SRC, 1, now=4.0), Install)


class CountingReads(KnownPeerStore):
    queries = 0

    def lookup_many(self, keys: Iterable[bytes]) -> dict[bytes, KnownPeer]:
        self.queries += 1
        return super().lookup_many(keys)


def test_batch_looks_up_once_and_keeps_order_and_replay_checks(tmp_path: Path) -> None:
    store = CountingReads(tmp_path / "peers.db")
    store.import_peers([(noise.public_key(CLIENT_PRIV), "100.64.0.2/32")])
    stranger = os.urandom(32)
    packet = initiation(at=1000.0)
    verdicts = make(store).handle_batch(
        [(b"junk", SRC, 1), (packet, SRC, 2), (initiation(priv=stranger), SRC, 3),
         (packet, SRC, 4)], now=1.0)
    assert [type(v) for v in verdicts] == [Drop, Install, Drop, Drop]
    assert verdicts[0] == Drop("malformed") and verdicts[2] == Drop("unknown_key")
    assert verdicts[3] == Drop("replay")  # the same initiation twice in one batch
    assert store.queries == 1
    store.close()


def test_replay_protection_survives_restart(store: KnownPeerStore) -> None:
    packet = initiation(at=1000.0)
    first = make(store)
    first.handle(packet, SRC, 1, now=1.0)
    first.flush(now=1.0)
    assert make(store).handle(packet, SRC, 1, now=2.0) == Drop("replay")


def test_active_peer_is_only_seen(store: KnownPeerStore) -> None:
    key = noise.public_key(CLIENT_PRIV)
    assert make(store, active={key}).handle(initiation(), SRC, 1, now=5.0) == Seen(
        key, 5.0, "198.51.100.7:1")


def test_unknown_key_dropped_and_its_replay_skips_the_dh(store: KnownPeerStore) -> None:
    adm = make(store)
    stranger = initiation(priv=bytes(range(90, 122)))
    assert adm.handle(stranger, SRC, 1, now=1.0) == Drop("unknown_key")
    assert adm.handle(stranger, SRC, 1, now=1.1) == Drop("refused_again")


def test_negative_cache_expires_so_later_imports_count(store: KnownPeerStore) -> None:
    adm = make(store, negative_cache_ttl=10.0)
    late = bytes(range(90, 122))
    assert adm.handle(initiation(priv=late, at=1.0), SRC, 1, now=1.0) == Drop("unknown_key")
    store.import_peers([(noise.public_key(late), "100.64.0.9/32")])
    assert adm.handle(initiation(priv=late, at=2.0), SRC, 1, now=2.0) == Drop("unknown_key")
    assert isinstance(adm.handle(initiation(priv=late, at=3.0), SRC, 1, now=12.0), Install)


def test_bad_mac1_and_malformed(store: KnownPeerStore) -> None:
    adm = make(store)
    other_gateway = noise.create_initiation(CLIENT_PRIV, noise.public_key(bytes(range(32))))
    assert adm.handle(other_gateway, SRC, 1, now=1.0) == Drop("bad_mac1")
    assert adm.handle(b"\x04" + bytes(147), SRC, 1, now=1.0) == Drop("malformed")


def test_impostor_knowing_only_the_public_key_is_refused(store: KnownPeerStore) -> None:
    # Anyone can encrypt a known public key to the gateway; only the holder of its private key
    # can produce the timestamp's key (static-static DH). The impostor uses its own instead.
    impostor = bytes(range(100, 132))
    gw_pub = noise.public_key(GW_PRIV)
    eph = bytes(range(140, 172))
    c, h = noise._initial_state(gw_pub)
    c = noise.kdf1(c, noise.public_key(eph))
    h = noise.blake2s_hash(h, noise.public_key(eph))
    c, k = noise.kdf2(c, noise.dh(eph, gw_pub))
    enc_static = noise._seal(k, noise.public_key(CLIENT_PRIV), h)
    h = noise.blake2s_hash(h, enc_static)
    _, k = noise.kdf2(c, noise.dh(impostor, gw_pub))
    body = (b"\x01\x00\x00\x00" + bytes(4) + noise.public_key(eph) + enc_static
            + noise._seal(k, noise.tai64n(5.0), h))
    packet = body + noise.mac(noise.mac1_key(gw_pub), body) + bytes(16)
    assert make(store).handle(packet, SRC, 1, now=1.0) == Drop("decrypt")


def test_rate_limit_is_per_source(store: KnownPeerStore) -> None:
    adm = make(store, rate_per_source=1.0, burst_per_source=2.0)
    stranger = bytes(range(90, 122))
    verdicts = [adm.handle(initiation(priv=stranger, at=i), SRC, 1, now=0.0) for i in range(4)]
    assert verdicts[:2] == [Drop("unknown_key")] * 2
    assert [(type(v), v.reason) for v in verdicts[2:]] == [(CookieReply, "rate_limited")] * 2
    assert isinstance(adm.handle(initiation(), bytes([198, 51, 100, 8]), 1, now=0.0), Install)
    assert adm.dh_operations == 4  # one per stranger, two for the install; cookies none


def test_flood_from_many_sources_keeps_tables_bounded(store: KnownPeerStore) -> None:
    adm = make(store, sources_tracked=64, negative_cache_size=32)
    gw_pub = noise.public_key(GW_PRIV)
    for i in range(400):
        packet = noise.create_initiation(os.urandom(32), gw_pub)
        assert adm.handle(packet, i.to_bytes(4, "big"), 1, now=i / 1000).reason == "unknown_key"
    assert len(adm.buckets) == 64
    assert len(adm.refused) == 32 and len(adm.unknown_keys) == 32
    # ...and a known peer still gets in at once.
    assert isinstance(adm.handle(initiation(), SRC, 1, now=1.0), Install)


def test_locked_store_never_raises_and_a_peer_imported_under_the_lock_gets_in(
        tmp_path: Path) -> None:
    db = tmp_path / "peers.db"
    setup = KnownPeerStore(db)
    setup.import_peers([(noise.public_key(CLIENT_PRIV), "100.64.0.2/32")])
    setup.close()
    store = KnownPeerStore(db, busy_timeout=0.01)
    adm = make(store, timestamp_flush_interval=0.5)
    late = bytes(range(90, 122))
    importer = sqlite3.connect(db, isolation_level=None)  # a real second writer
    try:
        importer.execute("BEGIN EXCLUSIVE")
        importer.execute("INSERT INTO known_peers(public_key, allowed_ips) VALUES (?, ?)",
                         (noise.public_key(late), "100.64.0.9/32"))
        # Lookups go on under the lock; the timestamp write cannot, and is kept for later.
        assert isinstance(adm.handle(initiation(at=1.0), SRC, 1, now=1.0), Install)
        assert adm.handle(initiation(priv=late, at=1.0), SRC, 2, now=1.0) == Drop("unknown_key")
        adm.maybe_flush(now=2.0)
        assert adm.write_backoff.failures == 1
        assert store.lookup(noise.public_key(CLIENT_PRIV)).last_timestamp is None
        importer.execute("COMMIT")
    finally:
        importer.close()
    adm.maybe_flush(now=2.05)  # the write waits for its backoff...
    assert store.lookup(noise.public_key(CLIENT_PRIV)).last_timestamp is None
    adm.maybe_flush(now=2.6)  # ...then lands; the import's commit cleared the unknown keys
    assert store.lookup(noise.public_key(CLIENT_PRIV)).last_timestamp == noise.tai64n(1.0)
    assert isinstance(adm.handle(initiation(priv=late, at=2.0), SRC, 2, now=2.7), Install)
    store.close()


class FailingReads(KnownPeerStore):
    """A store whose reads fail (WAL readers are not blocked by a lock, so no real one does)."""

    failing = True

    def lookup_many(self, keys: Iterable[bytes]) -> dict[bytes, KnownPeer]:
        if self.failing:
            raise StoreUnavailable("lookup: disk I/O error")
        return super().lookup_many(keys)


def test_failed_lookup_drops_counted_and_backs_off_without_dh(tmp_path: Path) -> None:
    store = FailingReads(tmp_path / "peers.db")
    store.import_peers([(noise.public_key(CLIENT_PRIV), "100.64.0.2/32")])
    adm = make(store)
    assert adm.handle(initiation(at=1.0), SRC, 1, now=1.0) == Drop("store_unavailable")
    assert adm.handle(initiation(at=2.0), SRC, 1, now=1.05) == Drop("store_unavailable")
    assert adm.read_backoff.failures == 1  # the second one did not touch the store
    store.failing = False
    assert isinstance(adm.handle(initiation(at=3.0), SRC, 1, now=1.2), Install)
    assert adm.read_backoff.failures == 0
    store.close()


def _prove(sent: bytes, reply: CookieReply, retry: bytes) -> bytes:
    """What a WireGuard initiator does with a cookie reply to `sent`: mac2 on its retry."""
    got = cookie.open_reply(reply.packet, noise.public_key(GW_PRIV), sent[116:132])
    return cookie.with_mac2(retry, got)


def test_global_dh_budget_answers_strangers_with_cookies_and_refills(
        store: KnownPeerStore) -> None:
    adm = make(store, dh_per_second=2.0, dh_burst=2.0)
    strangers = [noise.create_initiation(os.urandom(32), noise.public_key(GW_PRIV))
                 for _ in range(3)]
    # Each from its own source: the per-source limits are nowhere near.
    verdicts = [adm.handle(p, bytes([198, 51, 100, i]), 1, now=10.0)
                for i, p in enumerate(strangers)]
    assert verdicts[:2] == [Drop("unknown_key")] * 2
    assert isinstance(verdicts[2], CookieReply) and verdicts[2].reason == "dh_budget"
    assert adm.dh_operations == 2
    # The known client is under load too: a cookie, no DH...
    first = initiation(at=1.0)
    reply = adm.handle(first, SRC, 4000, now=10.1)
    assert isinstance(reply, CookieReply) and adm.dh_operations == 2
    # ...and its retry with mac2 is processed although the budget is still empty.
    retry = _prove(first, reply, initiation(at=2.0))
    assert isinstance(adm.handle(retry, SRC, 4000, now=10.2), Install)
    assert adm.proven == 1 and adm.dh_operations == 4
    # The same mac2 from another port proves nothing.
    assert isinstance(adm.handle(_prove(first, reply, initiation(at=3.0)), SRC, 4001, now=10.3),
                      CookieReply)
    # One second later the budget has refilled: no cookie needed.
    late = noise.create_initiation(os.urandom(32), noise.public_key(GW_PRIV))
    assert adm.handle(late, bytes([198, 51, 100, 99]), 1, now=11.3) == Drop("unknown_key")


def test_proven_sources_are_rate_limited_per_source_too(store: KnownPeerStore) -> None:
    adm = make(store, dh_per_second=1.0, dh_burst=1.0, rate_per_source=1.0,
               burst_per_source=2.0)
    assert adm.handle(noise.create_initiation(os.urandom(32), noise.public_key(GW_PRIV)),
                      bytes([198, 51, 100, 9]), 1, now=0.0) == Drop("unknown_key")
    first = initiation(at=1.0)
    reply = adm.handle(first, SRC, 4000, now=0.0)
    assert isinstance(reply, CookieReply)
    verdicts = [adm.handle(_prove(first, reply, initiation(priv=os.urandom(32))), SRC, 4000,
                           now=0.0) for _ in range(3)]
    assert verdicts == [Drop("unknown_key"), Drop("unknown_key"), Drop("rate_limited")]


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory) -> KnownPeerStore:
    s = KnownPeerStore(tmp_path_factory.mktemp("fuzz") / "peers.db")
    s.import_peers([(noise.public_key(CLIENT_PRIV), "100.64.0.2/32")])
    yield s
    s.close()


def _with_valid_mac1(body: bytes) -> bytes:
    body = b"\x01\x00\x00\x00" + body
    return body + noise.mac(noise.mac1_key(noise.public_key(GW_PRIV)), body) + bytes(16)


@settings(max_examples=300, deadline=None)
@given(payload=st.one_of(
    st.binary(max_size=200),
    st.binary(min_size=144, max_size=144).map(lambda b: b"\x01\x00\x00\x00" + b),
    st.binary(min_size=112, max_size=112).map(_with_valid_mac1),
), addr=st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16)),
   port=st.integers(0, 65535))
def test_fuzz_handle_never_raises(fuzz_store: KnownPeerStore, payload: bytes, addr: bytes,
                                  port: int) -> None:
    v = make(fuzz_store).handle(payload, addr, port, now=0.0)
    assert isinstance(v, Drop)


@given(st.ip_addresses(), st.integers(1, 65535))
def test_endpoint_is_in_the_canonical_form_wireguard_configs_require(ip, port):
    endpoint = format_endpoint(ip.packed, port)
    assert check_endpoint(endpoint) == endpoint
    assert endpoint_host_port(endpoint) == (str(ip), port)


def test_a_source_naming_strangers_spends_its_strikes_then_needs_a_cookie(
        store: KnownPeerStore) -> None:
    """A flood of fresh strangers from a few addresses costs a few DH per address, not one
    per packet; clients elsewhere are not touched, and one behind that address gets in by
    proving it (mac2)."""
    adm = make(store, strikes_per_source=3.0, strike_forgiven_s=20.0)
    gw_pub = noise.public_key(GW_PRIV)
    verdicts = [adm.handle(noise.create_initiation(os.urandom(32), gw_pub), SRC, 1, now=1.0)
                for _ in range(5)]
    assert verdicts[:3] == [Drop("unknown_key")] * 3
    assert [(type(v), v.reason) for v in verdicts[3:]] == [(CookieReply, "strikes")] * 2
    assert adm.dh_operations == 3
    assert isinstance(adm.handle(initiation(at=1.0), bytes([198, 51, 100, 8]), 1, now=1.0),
                      Install)
    first = initiation(at=2.0)
    reply = adm.handle(first, SRC, 4000, now=1.1)
    assert isinstance(reply, CookieReply) and reply.reason == "strikes"
    assert isinstance(adm.handle(_prove(first, reply, initiation(at=3.0)), SRC, 4000, now=1.2),
                      Install)
    # A strike is forgiven every 20 s: one stranger more gets its DH, then cookies again.
    assert adm.handle(noise.create_initiation(os.urandom(32), gw_pub), SRC, 1,
                      now=21.5) == Drop("unknown_key")
    assert isinstance(adm.handle(noise.create_initiation(os.urandom(32), gw_pub), SRC, 1,
                                 now=21.6), CookieReply)


def test_cookie_replies_to_one_source_are_limited_to_its_rate(store: KnownPeerStore) -> None:
    adm = make(store, dh_per_second=1.0, dh_burst=1.0, rate_per_source=1.0,
               burst_per_source=2.0)
    gw_pub = noise.public_key(GW_PRIV)
    assert adm.handle(noise.create_initiation(os.urandom(32), gw_pub), bytes([198, 51, 100, 9]),
                      1, now=0.0) == Drop("unknown_key")  # the budget is empty now
    verdicts = [adm.handle(noise.create_initiation(os.urandom(32), gw_pub), SRC, 1, now=0.0)
                for _ in range(4)]
    assert [type(v) for v in verdicts] == [CookieReply, CookieReply, Drop, Drop]
    assert verdicts[2:] == [Drop("rate_limited")] * 2
    # A second later its rate and the budget have refilled: the client there gets in.
    assert isinstance(adm.handle(initiation(), SRC, 1, now=1.0), Install)
