"""Relay frames and relay URLs (pure)."""

from __future__ import annotations

import pytest

from wiremesh.agent.relay_link import relay_urls, replica_relay_urls
from wiremesh.core.relayframe import MAX_PACKET, BadFrame, pack, unpack
from wiremesh.core.wire import check_relay

KEY = bytes(range(32))


def test_frame_roundtrip() -> None:
    pkt = b"\x01\0\0\0" + bytes(144)  # a handshake initiation is 148 bytes
    assert unpack(pack(KEY, pkt)) == (KEY, pkt)
    big = b"\x04\0\0\0" + bytes(MAX_PACKET - 4)
    assert unpack(pack(KEY, big)) == (KEY, big)


@pytest.mark.parametrize(("frame", "why"), [
    (b"", "shorter than a key"),
    (KEY, "shorter than any WireGuard message"),
    (KEY + b"\x04\0\0\0" + bytes(27), "shorter than any WireGuard message"),
    (KEY + b"\x05\0\0\0" + bytes(28), "not a WireGuard message"),
    (KEY + b"\x04\0\0\x01" + bytes(28), "not a WireGuard message"),
    (KEY + b"\x04\0\0\0" + bytes(MAX_PACKET - 3), "exceeds"),
])
def test_bad_frames_name_what_is_wrong(frame: bytes, why: str) -> None:
    with pytest.raises(BadFrame, match=why):
        unpack(frame)


def test_pack_refuses_a_short_key() -> None:
    with pytest.raises(BadFrame, match="32 bytes"):
        pack(KEY[:31], b"\x04\0\0\0" + bytes(28))


def test_relay_urls_resolve_the_embedded_relay_and_keep_the_order() -> None:
    got = relay_urls("https://mesh.example:8443", [
        "wss://r1.example/api/v1/relay", "/api/v1/relay", "http://r2.example:80/x",
        "ftp://nope/", "not a url"])
    assert got == ["wss://r1.example/api/v1/relay", "wss://mesh.example:8443/api/v1/relay",
                   "ws://r2.example:80/x"]
    assert relay_urls("http://127.0.0.1:8080/", ["/api/v1/relay"]) == [
        "ws://127.0.0.1:8080/api/v1/relay"]


def test_the_embedded_relay_is_on_every_replica_in_the_agents_order() -> None:
    """An agent given several replicas relays through the first replica that is up (the
    server's relay was the first replica's only: it died with it)."""
    got = replica_relay_urls(["https://s1.example", "https://s2.example:8443"], [
        "wss://r1.example/api/v1/relay", "/api/v1/relay", "https://s1.example/api/v1/relay"])
    assert got == ["wss://r1.example/api/v1/relay", "wss://s1.example/api/v1/relay",
                   "wss://s2.example:8443/api/v1/relay"]
    assert replica_relay_urls(["https://s1.example"], ["/api/v1/relay"]) == relay_urls(
        "https://s1.example", ["/api/v1/relay"])


def test_the_wire_contract_refuses_what_is_not_a_relay() -> None:
    for good in ("/api/v1/relay", "wss://r1.example:8443/api/v1/relay", "https://[fd00::1]/"):
        assert check_relay(good) == good
    for bad in ("relay.example", "ftp://x/", "wss:///no-host", "/a b", "javascript:x", 7,
                "/caf\u00e9", "/" + "x" * 600):
        with pytest.raises(ValueError, match="relay"):
            check_relay(bad)
