"""WireGuard key pairs: X25519, base64 as `wg` prints them, hex as UAPI wants them."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wiremesh.core.wire import key_bytes


class BadKey(ValueError):
    pass


def decode_key(b64: str) -> bytes:
    """The 32 bytes of a base64 WireGuard key in canonical form; raises BadKey with the reason."""
    try:
        return key_bytes(b64)
    except ValueError as e:
        raise BadKey(str(e)) from None


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def key_to_hex(b64: str) -> str:
    return decode_key(b64).hex()


def hex_to_key(hx: str) -> str:
    return encode_key(bytes.fromhex(hx))


def generate_private_key() -> str:
    return encode_key(X25519PrivateKey.generate().private_bytes_raw())


def public_key_of(private_b64: str) -> str:
    priv = X25519PrivateKey.from_private_bytes(decode_key(private_b64))
    return encode_key(priv.public_key().public_bytes_raw())


def write_private_key(path: Path, private_b64: str) -> None:
    """Write a private key readable only by its owner, never briefly world-readable, and
    whole or not at all: it goes to a new file that then replaces `path`, so a reader (or a
    restart after a crash) never finds an empty or half-written key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (private_b64 + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_or_create_private_key(path: Path) -> str:
    if path.exists():
        key = path.read_text().strip()
        decode_key(key)
        return key
    key = generate_private_key()
    write_private_key(path, key)
    return key
