from __future__ import annotations

import base64
import shutil
import stat
import subprocess

import pytest

from wiremesh.core.ipam import FIRST, LAST, address_at, index_of, indexes_from
from wiremesh.core.wire import check_key
from wiremesh.wg import keys


def test_ipam_skips_network_and_broadcast() -> None:
    assert address_at(FIRST) == "100.64.0.1"
    assert address_at(LAST) == "100.127.255.254"
    with pytest.raises(ValueError):
        address_at(0)


def test_ipam_hands_out_indexes_from_the_cursor_and_wraps_once() -> None:
    assert list(indexes_from(3, limit=5)) == [3, 4, 5, 1, 2]
    assert list(indexes_from(LAST + 5, limit=5)) == [1, 2, 3, 4, 5]  # out of range: start over
    assert next(indexes_from(2)) == 2
    assert index_of(address_at(70000)) == 70000


def test_key_pair_roundtrip_and_hex() -> None:
    priv = keys.generate_private_key()
    pub = keys.public_key_of(priv)
    assert check_key(pub) == pub
    assert keys.hex_to_key(keys.key_to_hex(pub)) == pub
    assert priv != pub


@pytest.mark.skipif(not shutil.which("wg"), reason="wireguard-tools (wg) not installed")
def test_public_key_matches_wg_tool() -> None:
    priv = keys.generate_private_key()
    out = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == keys.public_key_of(priv)


@pytest.mark.parametrize("bad", ["", "abc", "A" * 44, "!" * 43 + "=", "QUJD" * 10 + "QQ=="])
def test_bad_keys_rejected(bad: str) -> None:
    with pytest.raises(keys.BadKey):
        keys.decode_key(bad)


def test_zero_public_key_rejected() -> None:
    with pytest.raises(ValueError, match="all-zero"):
        check_key(keys.encode_key(bytes(32)))


def test_same_key_written_differently_is_refused() -> None:
    """Base64 has several spellings of 32 bytes (the last character's low bits are padding);
    only the one `wg` prints is a key, so a key can never be stored twice."""
    pub = keys.public_key_of(keys.generate_private_key())
    raw = keys.decode_key(pub)
    last = pub[42]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    other = alphabet[alphabet.index(last) ^ 1]  # flips a padding bit only
    twin = pub[:42] + other + "="
    assert base64.b64decode(twin) == raw and twin != pub
    with pytest.raises(keys.BadKey, match="canonical"):
        keys.decode_key(twin)
    with pytest.raises(ValueError, match="canonical"):
        check_key(twin)


def test_private_key_file_is_0600_and_reused(tmp_path) -> None:
    path = tmp_path / "sub" / "private.key"
    k1 = keys.load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load_or_create_private_key(path) == k1


def test_a_key_write_that_fails_midway_leaves_the_old_key_whole(tmp_path, monkeypatch) -> None:
    """The agent's key is written to a new file that replaces the old one: a reader (the lab
    read an empty file while an agent started) or a crash mid-write never sees half a key."""
    path = tmp_path / "private.key"
    old = keys.load_or_create_private_key(path)

    def crash(_fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(keys.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        keys.write_private_key(path, keys.generate_private_key())
    assert path.read_text().strip() == old
    assert [p.name for p in tmp_path.iterdir()] == ["private.key"]  # no temporary left
