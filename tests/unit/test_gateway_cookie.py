"""WireGuard cookie replies and mac2 (whitepaper 5.4.7), and the raw UDP datagrams that carry
them from the listen port. The real proof - a wireguard-go initiator opening our reply and
sending a mac2 we accept - is in tests/e2e/test_gateway_jit.py."""

from __future__ import annotations

import hashlib
import socket
import struct

import pytest
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt

from wiremesh.gateway import cookie, noise
from wiremesh.gateway.sender import udp_datagram

GW_PRIV = bytes(range(10, 42))
GW_PUB = noise.public_key(GW_PRIV)
CLIENT_PRIV = bytes(range(50, 82))
ADDR = bytes([198, 51, 100, 7])


def initiation() -> bytes:
    return noise.create_initiation(CLIENT_PRIV, GW_PUB, sender_index=0x01020304)


def test_reply_layout_and_contents_follow_the_whitepaper() -> None:
    checker = cookie.CookieChecker(GW_PUB)
    init = initiation()
    nonce = bytes(range(24))
    reply = checker.reply(init, ADDR, 4000, now=1.0, nonce=nonce)
    assert len(reply) == 64
    assert reply[:4] == b"\x03\x00\x00\x00" and reply[4:8] == init[4:8] and reply[8:32] == nonce
    # Decrypted independently: key HASH("cookie--" || Spub), AAD the initiation's mac1.
    key = hashlib.blake2s(b"cookie--" + GW_PUB).digest()
    plain = crypto_aead_xchacha20poly1305_ietf_decrypt(reply[32:], init[116:132], nonce, key)
    assert plain == checker.cookie(ADDR, 4000, now=1.0)
    with pytest.raises(noise.DecryptFailed):
        cookie.open_reply(reply, GW_PUB, bytes(16))  # bound to the mac1 we sent


def test_mac2_from_the_cookie_is_accepted_only_for_that_address_and_port() -> None:
    checker = cookie.CookieChecker(GW_PUB)
    init = initiation()
    got = cookie.open_reply(checker.reply(init, ADDR, 4000, now=1.0), GW_PUB, init[116:132])
    retry = cookie.with_mac2(initiation(), got)
    assert retry[132:] == hashlib.blake2s(retry[:132], key=got, digest_size=16).digest()
    assert checker.check_mac2(retry, ADDR, 4000, now=2.0)
    assert not checker.check_mac2(retry, ADDR, 4001, now=2.0)
    assert not checker.check_mac2(retry, bytes([198, 51, 100, 8]), 4000, now=2.0)
    assert not checker.check_mac2(initiation(), ADDR, 4000, now=2.0)  # mac2 all zero
    tampered = retry[:20] + bytes([retry[20] ^ 1]) + retry[21:]
    assert not checker.check_mac2(tampered, ADDR, 4000, now=2.0)


def test_secret_rotates_every_two_minutes_and_the_previous_one_is_honoured_once() -> None:
    checker = cookie.CookieChecker(GW_PUB)
    first = checker.cookie(ADDR, 4000, now=0.0)
    assert checker.cookie(ADDR, 4000, now=119.0) == first
    assert checker.cookie(ADDR, 4000, now=120.0) != first
    retry = cookie.with_mac2(initiation(), first)
    assert checker.check_mac2(retry, ADDR, 4000, now=150.0)  # previous secret
    assert not checker.check_mac2(retry, ADDR, 4000, now=241.0)  # two rotations later


def _ones_complement_ok(data: bytes) -> bool:
    """A valid checksum makes the one's complement sum all ones, i.e. 0 modulo 0xFFFF."""
    padded = data + b"\0" * (len(data) % 2)
    return sum(struct.unpack(f"!{len(padded) // 2}H", padded)) % 0xFFFF == 0


@pytest.mark.parametrize(("src", "dst"), [
    ("198.51.100.1", "198.51.100.7"),
    ("fd00::1", "fd00::7"),
])
def test_udp_datagram_headers_and_checksum(src: str, dst: str) -> None:
    family = socket.AF_INET if "." in src else socket.AF_INET6
    s, d = socket.inet_pton(family, src), socket.inet_pton(family, dst)
    payload = bytes(range(63))  # odd length: the checksum pads
    packet = udp_datagram(s, d, 51820, 4000, payload)
    hdr = 20 if family == socket.AF_INET else 40
    udp = packet[hdr:]
    assert struct.unpack("!HHH", udp[:6]) == (51820, 4000, 8 + len(payload))
    assert udp[8:] == payload
    if family == socket.AF_INET:
        assert packet[0] == 0x45 and packet[9] == 17 and packet[12:16] == s and packet[16:20] == d
        pseudo = s + d + struct.pack("!BBH", 0, 17, len(udp))
    else:
        assert packet[0] >> 4 == 6 and packet[6] == 17 and packet[8:24] == s and packet[24:40] == d
        pseudo = s + d + struct.pack("!I3xB", len(udp), 17)
    assert _ones_complement_ok(pseudo + udp)
