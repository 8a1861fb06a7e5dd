"""WireGuard's handshake initiation (Noise_IKpsk2), both sides, as far as the JIT gateway needs.

Pure: no sockets, no clocks except where a caller passes none (then `tai64n()` reads the time).
The responder side runs the first message of IKpsk2 only far enough to learn who is knocking:
the initiator's static public key and its TAI64N timestamp. It is split in two steps so the
gateway can look the key up after one Diffie-Hellman and skip the second for strangers.
The initiator side crafts valid initiations, for tests and the benchmark.

Names follow the WireGuard whitepaper (section 5.4): C chaining key, H hash, KDFn, AEAD, MAC.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"

MESSAGE_INITIATION = 1
INITIATION_SIZE = 148
KEY_SIZE = 32
TAG_SIZE = 16
TIMESTAMP_SIZE = 12
# Offsets inside an initiation: type(1) reserved(3) sender(4) ephemeral(32)
# static(32+16) timestamp(12+16) mac1(16) mac2(16).
_EPHEMERAL = slice(8, 40)
_STATIC = slice(40, 88)
_TIMESTAMP = slice(88, 116)
_MAC1 = slice(116, 132)
_MAC2 = slice(132, 148)
_NONCE_ZERO = bytes(12)
# TAI64 labels seconds from 1970 offset by 2^62 (plus 10 leap seconds, as WireGuard does).
_TAI64_BASE = 0x400000000000000A


class NoiseError(ValueError):
    """A packet the gateway must drop; `reason` is a short metric label."""

    reason = "malformed"


class MalformedPacket(NoiseError):
    reason = "malformed"


class BadMac1(NoiseError):
    reason = "bad_mac1"


class DecryptFailed(NoiseError):
    reason = "decrypt"


def blake2s_hash(*parts: bytes) -> bytes:
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


def _hmac(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s (RFC 2104, 64-byte blocks; keys here are at most 32 bytes). Written out
    because it runs 8 times per initiation: hmac.new(..., hashlib.blake2s) goes through a
    Python loop and OpenSSL's HMAC by name re-fetches the digest each call; both take twice
    as long as two plain BLAKE2s calls."""
    block = key.ljust(64, b"\0")
    inner = hashlib.blake2s(block.translate(_IPAD) + data).digest()
    return hashlib.blake2s(block.translate(_OPAD) + inner).digest()


def kdf1(key: bytes, data: bytes) -> bytes:
    t0 = _hmac(key, data)
    return _hmac(t0, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    t0 = _hmac(key, data)
    t1 = _hmac(t0, b"\x01")
    return t1, _hmac(t0, t1 + b"\x02")


def dh(private: bytes | X25519PrivateKey, public: bytes) -> bytes:
    """X25519; a low-order peer point (all-zero result) counts as a failed handshake.

    Pass a key object where the same private key is used again: loading one from bytes costs
    more than the exchange itself (it derives the public key)."""
    if isinstance(private, bytes):
        private = X25519PrivateKey.from_private_bytes(private)
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise DecryptFailed("low-order public key") from None


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_NONCE_ZERO, plaintext, aad)


def _open(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE_ZERO, ciphertext, aad)
    except InvalidTag:
        raise DecryptFailed("AEAD tag mismatch") from None


def tai64n(unix_seconds: float | None = None) -> bytes:
    t = time.time() if unix_seconds is None else unix_seconds
    secs = int(t)
    return struct.pack(">QI", _TAI64_BASE + secs, int((t - secs) * 1e9))


def tai64n_to_unix(ts: bytes) -> float:
    secs: int
    nanos: int
    secs, nanos = struct.unpack(">QI", ts)
    return secs - _TAI64_BASE + nanos / 1e9


def _initial_state(responder_public: bytes) -> tuple[bytes, bytes]:
    """(C, H) after mixing in the construction, identifier and the responder's static key."""
    c = blake2s_hash(CONSTRUCTION)
    h = blake2s_hash(blake2s_hash(c, IDENTIFIER), responder_public)
    return c, h


def mac1_key(responder_public: bytes) -> bytes:
    return blake2s_hash(LABEL_MAC1, responder_public)


@dataclass(frozen=True)
class Initiation:
    sender_index: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes


def parse_initiation(packet: bytes) -> Initiation:
    """Split a UDP payload into the fields of a handshake initiation (no crypto)."""
    if len(packet) != INITIATION_SIZE:
        raise MalformedPacket(f"initiation is {INITIATION_SIZE} bytes, got {len(packet)}")
    if packet[:4] != b"\x01\x00\x00\x00":
        raise MalformedPacket("not a handshake initiation (type 1, reserved zero)")
    return Initiation(
        sender_index=int.from_bytes(packet[4:8], "little"),
        ephemeral=bytes(packet[_EPHEMERAL]),
        encrypted_static=bytes(packet[_STATIC]),
        encrypted_timestamp=bytes(packet[_TIMESTAMP]),
        mac1=bytes(packet[_MAC1]),
        mac2=bytes(packet[_MAC2]),
    )


@dataclass(frozen=True)
class PendingTimestamp:
    """Responder state between learning the initiator's key and opening its timestamp."""

    initiator_static: bytes
    chaining_key: bytes
    hash: bytes
    encrypted_timestamp: bytes


class Responder:
    """The gateway's side: holds its private key and everything derived from it once."""

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != KEY_SIZE:
            raise ValueError("private key must be 32 bytes")
        self._private = X25519PrivateKey.from_private_bytes(private_key)
        self.public_key = self._private.public_key().public_bytes_raw()
        self._mac1_key = mac1_key(self.public_key)
        self._c0, self._h0 = _initial_state(self.public_key)

    def check_mac1(self, packet: bytes) -> bool:
        """One keyed BLAKE2s: the cheap gate every packet passes before any DH."""
        return hmac.compare_digest(mac(self._mac1_key, packet[:116]), packet[_MAC1])

    def open_static(self, msg: Initiation) -> PendingTimestamp:
        """First DH: decrypt the initiator's static public key."""
        c = kdf1(self._c0, msg.ephemeral)
        h = blake2s_hash(self._h0, msg.ephemeral)
        c, k = kdf2(c, dh(self._private, msg.ephemeral))
        static = _open(k, msg.encrypted_static, h)
        h = blake2s_hash(h, msg.encrypted_static)
        return PendingTimestamp(static, c, h, msg.encrypted_timestamp)

    def open_timestamp(self, pending: PendingTimestamp) -> bytes:
        """Second DH (static-static): decrypt and return the 12-byte TAI64N timestamp."""
        _, k = kdf2(pending.chaining_key, dh(self._private, pending.initiator_static))
        return _open(k, pending.encrypted_timestamp, pending.hash)

    def consume(self, packet: bytes) -> tuple[bytes, bytes]:
        """Whole check of one initiation: (initiator static public key, TAI64N timestamp)."""
        msg = parse_initiation(packet)
        if not self.check_mac1(packet):
            raise BadMac1("mac1 does not match this responder's public key")
        pending = self.open_static(msg)
        return pending.initiator_static, self.open_timestamp(pending)


def create_initiation(
    initiator_private: bytes,
    responder_public: bytes,
    *,
    timestamp: bytes | None = None,
    sender_index: int | None = None,
    ephemeral_private: bytes | None = None,
) -> bytes:
    """A complete handshake initiation as a WireGuard client would send it (mac2 zero)."""
    eph = ephemeral_private or X25519PrivateKey.generate().private_bytes_raw()
    eph_pub = public_key(eph)
    idx = int.from_bytes(os.urandom(4), "little") if sender_index is None else sender_index
    c, h = _initial_state(responder_public)
    c = kdf1(c, eph_pub)
    h = blake2s_hash(h, eph_pub)
    c, k = kdf2(c, dh(eph, responder_public))
    enc_static = _seal(k, public_key(initiator_private), h)
    h = blake2s_hash(h, enc_static)
    _, k = kdf2(c, dh(initiator_private, responder_public))
    enc_ts = _seal(k, tai64n() if timestamp is None else timestamp, h)
    body = b"\x01\x00\x00\x00" + struct.pack("<I", idx) + eph_pub + enc_static + enc_ts
    return body + mac(mac1_key(responder_public), body) + bytes(16)
