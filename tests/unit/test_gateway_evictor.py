"""The active set: deduplicated admits, the cap (least recently active first), activity from
status polls, TTL eviction; and the two-block install that kicks the gateway's handshake."""

from __future__ import annotations

from wiremesh.gateway.admission import Install
from wiremesh.gateway.evictor import ActiveSet, StatusSnapshot
from wiremesh.gateway.provisioner import KICK_KEEPALIVE_S, install_configs
from wiremesh.wg.backend import WgPeerStatus
from wiremesh.wg.keys import encode_key
from wiremesh.wg.uapi import render_set


def key(i: int) -> bytes:
    return bytes([i]) * 32


def ins(i: int) -> Install:
    return Install(key(i), (f"100.64.0.{i}/32",), f"198.51.100.{i}:4000", 0.0)


def status(i: int, rx: int = 0, hs: float = 0.0) -> tuple[str, WgPeerStatus]:
    return encode_key(key(i)), WgPeerStatus(encode_key(key(i)), rx_bytes=rx, last_handshake=hs)


def test_admit_deduplicates() -> None:
    a = ActiveSet(ttl=10, max_active=10)
    new, victims = a.admit([ins(1), ins(1), ins(2)], now=0.0)
    assert [n.public_key for n in new] == [key(1), key(2)] and victims == {}
    new, _ = a.admit([ins(2), ins(3)], now=1.0)
    assert [n.public_key for n in new] == [key(3)] and len(a) == 3


def test_cap_pushes_out_least_recently_active() -> None:
    a = ActiveSet(ttl=100, max_active=3)
    a.admit([ins(1), ins(2), ins(3)], now=0.0)
    a.touch(key(1), 5.0)
    _, victims = a.admit([ins(4), ins(5)], now=6.0)
    assert list(victims) == [key(2), key(3)]
    assert victims[key(2)].endpoint == "198.51.100.2:4000"  # so the guard can forget it
    assert set(a.peers) == {key(1), key(4), key(5)}


def test_cap_never_exceeded_by_one_big_batch() -> None:
    a = ActiveSet(ttl=100, max_active=2)
    new, victims = a.admit([ins(i) for i in range(1, 6)], now=0.0)
    assert len(new) == 2 and victims == {} and len(a) == 2


def test_ttl_eviction_uses_handshakes_and_rx_changes() -> None:
    a = ActiveSet(ttl=10, max_active=10)
    a.admit([ins(1), ins(2), ins(3)], now=0.0)
    # Peer 1 handshook at 8, peer 2's byte counter moved between polls, peer 3 went quiet.
    a.observe(StatusSnapshot(dict([status(1, hs=8.0), status(2, rx=100), status(3)]), at=9.0))
    assert list(a.take_idle(now=12.0)) == [key(3)]
    a.observe(StatusSnapshot(dict([status(1, hs=8.0), status(2, rx=100)]), at=15.0))
    assert list(a.take_idle(now=18.5)) == [key(1)]
    assert list(a.take_idle(now=19.5)) == [key(2)]
    assert len(a) == 0


def test_touch_never_moves_activity_backwards() -> None:
    a = ActiveSet(ttl=10, max_active=10)
    a.admit([ins(1)], now=5.0)
    a.touch(key(1), 1.0)
    assert a.peers[key(1)].last_activity == 5.0


def test_relocate_reports_the_old_endpoint_once() -> None:
    a = ActiveSet(ttl=10, max_active=10)
    a.admit([ins(1)], now=0.0)
    assert a.relocate(key(1), "198.51.100.1:4000") is None
    assert a.relocate(key(1), "203.0.113.1:5000") == "198.51.100.1:4000"
    assert a.relocate(key(9), "203.0.113.1:5000") is None


def test_install_is_keepalive_kick_then_off_in_one_write() -> None:
    body = render_set(install_configs([ins(7)]), [])
    blocks = body.split("public_key=")[1:]
    assert len(blocks) == 2
    assert f"persistent_keepalive_interval={KICK_KEEPALIVE_S}" in blocks[0]
    assert "persistent_keepalive_interval=0" in blocks[1]
    assert all("endpoint=198.51.100.7:4000" in b and "allowed_ip=100.64.0.7/32" in b
               for b in blocks)
