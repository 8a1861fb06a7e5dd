"""WireGuard's cookie reply (whitepaper section 5.4.7): prove an address before any DH.

Under load, a responder answers an initiation that has no valid mac2 with a cookie reply
instead of doing Diffie-Hellman. The cookie is a MAC of the initiator's source address and
port under a secret that changes every two minutes, so it costs the responder no state per
initiator; the initiator can only learn it by receiving packets at that address. Its next
initiation carries mac2 = MAC(cookie, message up to mac1), which proves the address and lets it
through (rate-limited per source) while spoofed floods are left with cookie replies.

Reply layout: type 3, reserved(3), receiver index(4) = the initiation's sender index,
nonce(24), XChaCha20-Poly1305(key = HASH("cookie--" || responder public key), nonce, cookie,
AAD = the initiation's mac1) (16 + 16). Pure: the caller passes the time; the initiator's side
is here too, for tests and the benchmark.
"""

from __future__ import annotations

import hmac
import os
import struct

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from wiremesh.gateway import noise

LABEL_COOKIE = b"cookie--"
MESSAGE_COOKIE_REPLY = 3
COOKIE_REPLY_SIZE = 64
NONCE_SIZE = 24
SECRET_LIFETIME_S = 120.0
_MAC1_END = 132  # mac2 covers the initiation up to and including mac1


def cookie_key(responder_public: bytes) -> bytes:
    return noise.blake2s_hash(LABEL_COOKIE, responder_public)


def source_bytes(addr: bytes, port: int) -> bytes:
    """What the cookie binds: the source IP (4 or 16 bytes) then the port, network order."""
    return addr + struct.pack("!H", port)


class CookieChecker:
    """The responder's side: makes cookie replies and checks mac2."""

    def __init__(self, responder_public: bytes) -> None:
        self._key = cookie_key(responder_public)
        self._secret = b""
        self._previous = b""
        self._secret_at = float("-inf")

    def _rotate(self, now: float) -> None:
        if now - self._secret_at >= SECRET_LIFETIME_S:
            self._previous = self._secret if now - self._secret_at < 2 * SECRET_LIFETIME_S else b""
            self._secret, self._secret_at = os.urandom(32), now

    def cookie(self, addr: bytes, port: int, now: float) -> bytes:
        self._rotate(now)
        return noise.mac(self._secret, source_bytes(addr, port))

    def check_mac2(self, packet: bytes, addr: bytes, port: int, now: float) -> bool:
        """mac2 made with a cookie for this address under the current (or, across a
        rotation, the previous) secret. Two BLAKE2s; an all-zero mac2 costs nothing."""
        mac2 = packet[_MAC1_END:_MAC1_END + 16]
        if mac2 == bytes(16):
            return False
        self._rotate(now)
        src = source_bytes(addr, port)
        for secret in (self._secret, self._previous):
            if secret and hmac.compare_digest(
                    noise.mac(noise.mac(secret, src), packet[:_MAC1_END]), mac2):
                return True
        return False

    def reply(self, initiation: bytes, addr: bytes, port: int, now: float,
              nonce: bytes | None = None) -> bytes:
        """The cookie reply to `initiation` (already checked for shape and mac1)."""
        nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
            self.cookie(addr, port, now), initiation[116:_MAC1_END], nonce, self._key)
        return (bytes([MESSAGE_COOKIE_REPLY, 0, 0, 0]) + initiation[4:8] + nonce + sealed)


def open_reply(reply: bytes, responder_public: bytes, initiation_mac1: bytes) -> bytes:
    """The initiator's side: the cookie inside a reply, checked against the mac1 we sent."""
    if len(reply) != COOKIE_REPLY_SIZE or reply[0] != MESSAGE_COOKIE_REPLY:
        raise noise.MalformedPacket("not a cookie reply (type 3, 64 bytes)")
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(
            reply[32:], initiation_mac1, reply[8:32], cookie_key(responder_public))
    except CryptoError:
        raise noise.DecryptFailed("cookie reply does not open") from None


def with_mac2(initiation: bytes, cookie: bytes) -> bytes:
    """The initiator's side: `initiation` with mac2 set from a received cookie."""
    return initiation[:_MAC1_END] + noise.mac(cookie, initiation[:_MAC1_END])
