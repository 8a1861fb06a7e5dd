"""resolv.conf handling: our resolver replaces the file while the agent runs, and the file
comes back exactly as it was (bytes, mode, symlink, absence) when it stops or after a crash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wiremesh.agent.sysdns import MARKER, ResolvConfFile, parse_nameservers, system_dns

ORIGINAL = (b"# from DHCP\nnameserver 192.0.2.53\nnameserver 198.51.100.53\n"
            b"search corp.example\noptions edns0 timeout:2\n")


def manager(tmp_path: Path) -> ResolvConfFile:
    (tmp_path / "state").mkdir(exist_ok=True)
    return ResolvConfFile(tmp_path / "resolv.conf", tmp_path / "state" / "resolv.conf.saved")


def test_installed_file_names_our_resolver_and_keeps_search_and_options(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.path.write_bytes(ORIGINAL)
    upstream = m.install("100.64.0.7", ["mesh.internal", "corp.example"])
    assert upstream == ("192.0.2.53", "198.51.100.53")
    text = m.path.read_text()
    assert parse_nameservers(text) == ["100.64.0.7"]
    assert "search mesh.internal corp.example" in text
    assert "options edns0 timeout:2" in text
    assert MARKER in text


def test_restore_gives_back_the_exact_bytes_and_mode(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.path.write_bytes(ORIGINAL + b"\xff odd byte\n")
    os.chmod(m.path, 0o640)
    m.install("100.64.0.7", ["mesh.internal"])
    assert m.path.read_bytes() != ORIGINAL
    m.restore()
    assert m.path.read_bytes() == ORIGINAL + b"\xff odd byte\n"
    assert m.path.stat().st_mode & 0o777 == 0o640
    assert not m.backup.exists()
    m.restore()  # nothing saved: nothing to do
    assert m.path.read_bytes() == ORIGINAL + b"\xff odd byte\n"


def test_a_symlink_comes_back_as_the_same_symlink(tmp_path: Path) -> None:
    m = manager(tmp_path)
    target = tmp_path / "stub-resolv.conf"
    target.write_bytes(ORIGINAL)
    m.path.symlink_to(target)
    assert m.install("100.64.0.7", ["mesh.internal"]) == ("192.0.2.53", "198.51.100.53")
    assert not m.path.is_symlink()
    assert target.read_bytes() == ORIGINAL  # the link's target is never written
    m.restore()
    assert m.path.is_symlink() and os.readlink(m.path) == str(target)


def test_a_file_that_was_not_there_is_removed(tmp_path: Path) -> None:
    m = manager(tmp_path)
    assert m.install("100.64.0.7", ["mesh.internal"]) == ()
    assert m.path.exists()
    m.restore()
    assert not m.path.exists()


def test_a_crashed_run_is_undone_by_the_next_start(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.path.write_bytes(ORIGINAL)
    m.install("100.64.0.7", ["mesh.internal"])
    # The agent died without restoring; the next run installs again over a clean original,
    # so the upstream it learns is the real one, not our own resolver.
    again = manager(tmp_path)
    assert again.install("100.64.0.9", ["mesh.internal"]) == ("192.0.2.53", "198.51.100.53")
    again.restore()
    assert m.path.read_bytes() == ORIGINAL


def test_a_file_someone_else_rewrote_meanwhile_is_left_alone(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.path.write_bytes(ORIGINAL)
    m.install("100.64.0.7", ["mesh.internal"])
    m.path.write_bytes(b"nameserver 203.0.113.53\n")  # a DHCP renewal, say
    m.restore()
    assert m.path.read_bytes() == b"nameserver 203.0.113.53\n"
    assert not m.backup.exists()


def test_an_explicit_file_is_used_even_with_systemd_resolved(tmp_path: Path) -> None:
    chosen = system_dns("wm0", tmp_path / "r.conf", tmp_path)
    assert isinstance(chosen, ResolvConfFile) and chosen.path == tmp_path / "r.conf"


@pytest.mark.parametrize("text,expect", [
    ("nameserver 192.0.2.1\n#nameserver 192.0.2.2\n nameserver  192.0.2.3 \n",
     ["192.0.2.1", "192.0.2.3"]),
    ("", []),
])
def test_parse_nameservers(text: str, expect: list[str]) -> None:
    assert parse_nameservers(text) == expect
