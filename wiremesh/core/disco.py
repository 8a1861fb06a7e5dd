"""Path probes between two peers (pure codec): a ping answered by a pong, both sent from
the WireGuard port, authenticated with a key only the two peers can compute.

The key comes from the X25519 static-static secret of the two WireGuard key pairs (each side
combines its private key with the other's public key and gets the same secret; nobody else
can), hashed with a label so it is never the secret itself. A probe from anyone else fails
its MAC and is dropped without an answer, so the probes cannot be used to make a peer send
datagrams to arbitrary addresses, and a forged pong cannot steer WireGuard to a path.

    magic "WMD1" | type (1 ping, 2 pong) | sender's public key (32) | transaction id (12) |
    MAC (16) = BLAKE2s-128(keyed: link key, everything before it)

The magic's first byte is never a WireGuard message type, so the agent's tap (and only it)
sees these next to WireGuard's traffic.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

MAGIC = b"WMD1"
PING, PONG = 1, 2
KEY_LEN, TXID_LEN, MAC_LEN = 32, 12, 16
SIZE = len(MAGIC) + 1 + KEY_LEN + TXID_LEN + MAC_LEN
_LABEL = b"wiremesh path probe v1"


class DiscoError(ValueError):
    pass


@dataclass(frozen=True)
class Probe:
    kind: int
    sender: bytes  # raw public key
    txid: bytes


def link_key(own_private: bytes, peer_public: bytes) -> bytes:
    """The probe key of the pair (the same on both sides)."""
    shared = X25519PrivateKey.from_private_bytes(own_private).exchange(
        X25519PublicKey.from_public_bytes(peer_public))
    return hashlib.blake2s(_LABEL + shared).digest()


def _mac(key: bytes, body: bytes) -> bytes:
    return hashlib.blake2s(body, key=key, digest_size=MAC_LEN).digest()


def encode(kind: int, sender: bytes, txid: bytes, key: bytes) -> bytes:
    if kind not in (PING, PONG) or len(sender) != KEY_LEN or len(txid) != TXID_LEN:
        raise DiscoError("bad probe fields")
    body = MAGIC + bytes([kind]) + sender + txid
    return body + _mac(key, body)


def peek_sender(data: bytes) -> bytes:
    """The claimed sender of a probe (to find its link key); raises DiscoError on junk."""
    if len(data) != SIZE or not data.startswith(MAGIC):
        raise DiscoError(f"not a path probe ({len(data)} bytes)")
    if data[4] not in (PING, PONG):
        raise DiscoError(f"unknown probe type {data[4]}")
    return data[5:5 + KEY_LEN]


def decode(data: bytes, key: bytes) -> Probe:
    """A probe whose MAC checks out under `key`; raises DiscoError otherwise."""
    sender = peek_sender(data)
    body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise DiscoError("path probe with a bad MAC")
    return Probe(data[4], sender, data[5 + KEY_LEN:5 + KEY_LEN + TXID_LEN])
