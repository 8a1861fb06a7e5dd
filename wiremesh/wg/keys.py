"""WireGuard key pairs: X25519, base64 as `wg` prints them, hex as UAPI wants them."""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
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


def make_private_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each readable by our user only (mode 0700).
    Path.mkdir(parents=True) gives the parents it creates the default mode (0755)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)  # exist_ok: another process making it meanwhile


def write_private_file(path: Path, data: bytes) -> None:
    """Write `data` readable only by its owner, never briefly readable by others, and whole
    or not at all: it goes to a new file that then replaces `path`, so a reader (or a restart
    after a crash) never finds an empty or half-written file.

    The new file is made by mkstemp (O_CREAT|O_EXCL|O_NOFOLLOW, 0600, a random name): a file
    or symlink already waiting at a predictable temp name was written through as root,
    or kept its own mode (a 0644 `prefs.json.tmp` left prefs.json 0644)."""
    make_private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            # A default ACL on the directory can widen mkstemp's 0600 through the ACL mask.
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_private_key(path: Path, private_b64: str) -> None:
    write_private_file(path, (private_b64 + "\n").encode())


def load_or_create_private_key(path: Path) -> str:
    """The key saved at `path`, or a new one saved there; BadKey naming the file when what
    is there is no key (a directory, not text, not a key)."""
    if path.exists():
        try:
            key = path.read_text().strip()
            decode_key(key)
        except (OSError, ValueError) as e:  # UnicodeDecodeError and BadKey are ValueErrors
            why = e.strerror if isinstance(e, OSError) else e
            raise BadKey(f"the private key {path} cannot be used: {why}") from None
        return key
    key = generate_private_key()
    write_private_key(path, key)
    return key
