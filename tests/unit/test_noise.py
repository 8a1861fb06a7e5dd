"""The handshake-initiation crypto against a packet captured from a real wireguard-go client."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiremesh.gateway import noise

FIXTURE = Path(__file__).parent.parent / "fixtures" / "gateway" / "wireguard_go_initiation.json"


@pytest.fixture(scope="module")
def captured() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def responder(captured: dict) -> noise.Responder:
    return noise.Responder(base64.b64decode(captured["gateway_private_key"]))


def test_decrypts_real_wireguard_go_initiation(captured: dict, responder: noise.Responder) -> None:
    packet = bytes.fromhex(captured["packet_hex"])
    static, ts = responder.consume(packet)
    assert base64.b64encode(static).decode() == captured["client_public_key"]
    # The client stamped the packet when it sent it, within a second of the capture script.
    assert abs(noise.tai64n_to_unix(ts) - captured["captured_unix"]) < 1.0


def test_real_initiation_mac1_is_keyed_by_gateway_public_key(
    captured: dict, responder: noise.Responder
) -> None:
    packet = bytes.fromhex(captured["packet_hex"])
    assert responder.check_mac1(packet)
    other = noise.Responder(bytes(range(32)))
    assert not other.check_mac1(packet)
    with pytest.raises(noise.BadMac1):
        other.consume(packet)


@pytest.mark.parametrize("offset", [4, 8, 40, 100, 116, 131])
def test_any_flipped_bit_before_mac2_is_rejected(
    captured: dict, responder: noise.Responder, offset: int
) -> None:
    packet = bytearray.fromhex(captured["packet_hex"])
    packet[offset] ^= 0x01
    with pytest.raises(noise.BadMac1):
        responder.consume(bytes(packet))


def test_valid_mac1_but_tampered_static_fails_decryption(
    captured: dict, responder: noise.Responder
) -> None:
    packet = bytearray.fromhex(captured["packet_hex"])
    packet[50] ^= 0x80
    packet[116:132] = noise.mac(noise.mac1_key(responder.public_key), bytes(packet[:116]))
    with pytest.raises(noise.DecryptFailed):
        responder.consume(bytes(packet))


def test_our_initiator_round_trips_with_chosen_fields(captured: dict) -> None:
    client = base64.b64decode(captured["client_private_key"])
    responder = noise.Responder(base64.b64decode(captured["gateway_private_key"]))
    ts = noise.tai64n(1_700_000_000.25)
    packet = noise.create_initiation(client, responder.public_key, timestamp=ts, sender_index=7)
    assert len(packet) == noise.INITIATION_SIZE
    assert noise.parse_initiation(packet).sender_index == 7
    assert responder.consume(packet) == (noise.public_key(client), ts)


def test_initiation_for_another_gateway_has_bad_mac1(captured: dict) -> None:
    responder = noise.Responder(base64.b64decode(captured["gateway_private_key"]))
    packet = noise.create_initiation(bytes(range(1, 33)), noise.public_key(bytes(range(2, 34))))
    assert not responder.check_mac1(packet)


def test_tai64n_round_trip_and_order() -> None:
    assert noise.tai64n_to_unix(noise.tai64n(1234.5)) == pytest.approx(1234.5)
    assert noise.tai64n(1000.000001) > noise.tai64n(1000.0) > noise.tai64n(999.999999)


def test_kdf_matches_hmac_chain_definition() -> None:
    # KDF2 outputs are HMAC(t0, 0x1) and HMAC(t0, t1 || 0x2) with t0 = HMAC(key, input).
    t0 = noise._hmac(b"k" * 32, b"input")
    t1 = noise._hmac(t0, b"\x01")
    assert noise.kdf2(b"k" * 32, b"input") == (t1, noise._hmac(t0, t1 + b"\x02"))
    assert noise.kdf1(b"k" * 32, b"input") == t1


@pytest.mark.parametrize(
    "packet",
    [b"", b"\x01", b"\x01\x00\x00\x00" + bytes(143), b"\x02\x00\x00\x00" + bytes(144),
     b"\x01\x00\x01\x00" + bytes(144)],
)
def test_malformed_packets(packet: bytes) -> None:
    with pytest.raises(noise.MalformedPacket):
        noise.parse_initiation(packet)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=144, max_size=144).map(lambda b: b"\x01\x00\x00\x00" + b),
))
def test_fuzz_consume_only_raises_noise_errors(packet: bytes) -> None:
    responder = noise.Responder(bytes(range(32)))
    with contextlib.suppress(noise.NoiseError):
        responder.consume(packet)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_fuzz_valid_mac1_with_garbage_ephemeral_never_escapes(ephemeral: bytes) -> None:
    # Past the mac1 gate an attacker controls the ephemeral key; low-order points included.
    responder = noise.Responder(bytes(range(32)))
    body = b"\x01\x00\x00\x00" + bytes(4) + ephemeral + bytes(76)
    packet = body + noise.mac(noise.mac1_key(responder.public_key), body) + bytes(16)
    with pytest.raises(noise.DecryptFailed):
        responder.consume(packet)
