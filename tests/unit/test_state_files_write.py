"""The agent's private files (key, state, prefs) and pid file: written through a fresh 0600
file, never through whatever already sits at a temp name, and read back into one clear error."""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from wiremesh.agent import pidfile, prefs
from wiremesh.agent import state as statefile
from wiremesh.wg.keys import generate_private_key, write_private_key

DEEP = "[" * 100_000 + "]" * 100_000  # json raised RecursionError on it


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_prefs_never_takes_the_mode_of_a_leftover_temp_file(tmp_path: Path) -> None:
    # A 0644 `prefs.json.tmp` was opened with O_TRUNC, kept its mode and became prefs.json.
    leftover = tmp_path / "prefs.json.tmp"
    leftover.write_text("")
    leftover.chmod(0o644)
    prefs.save(tmp_path, prefs.Prefs(exit_node="auto"))
    assert _mode(tmp_path / "prefs.json") == 0o600
    assert prefs.load(tmp_path).exit_node == "auto"


@pytest.mark.parametrize("name", ["state.json.tmp", "prefs.json.tmp",
                                  f".private.key.{os.getpid()}.tmp"])
def test_a_symlink_at_a_temp_name_is_never_written_through(tmp_path: Path, name: str) -> None:
    # Root overwrote the symlink's target, and the private file became a symlink to it.
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (tmp_path / name).symlink_to(victim)
    cfg = statefile.AgentConfig("http://192.0.2.1:8080", 1, "a", "wmp_x", "100.64.0.1", 10,
                                "wm0", 51820, [])
    statefile.save(tmp_path, statefile.AgentState(cfg))
    prefs.save(tmp_path, prefs.Prefs(exit_node="auto"))
    write_private_key(statefile.private_key_path(tmp_path), generate_private_key())
    assert victim.read_text() == "untouched"
    for written in ("state.json", "prefs.json", "private.key"):
        path = tmp_path / written
        assert not path.is_symlink() and _mode(path) == 0o600, written


def test_private_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private_key(tmp_path / "k" / "private.key", generate_private_key())
    finally:
        os.umask(old)
    assert _mode(tmp_path / "k" / "private.key") == 0o600
    assert _mode(tmp_path / "k") == 0o700


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    prefs.save(tmp_path, prefs.Prefs(exit_node="auto"))

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(prefs.PrefsError, match=r"cannot save .*: No space left on device"):
        prefs.save(tmp_path, prefs.Prefs(exit_node=None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefs.json"]
    assert prefs.load(tmp_path).exit_node == "auto"


@pytest.mark.parametrize(("content", "expected"), [
    (DEEP.encode(), "is unreadable: its JSON nests too deeply"),
    (b'{"exit_node": "\xff"}', "is unreadable: 'utf-8' codec can't decode byte 0xff"),
    (None, "cannot be read: Is a directory"),
])
def test_unreadable_state_and_prefs_are_their_module_s_error(
        tmp_path: Path, content: bytes | None, expected: str) -> None:
    for name in ("state.json", "prefs.json"):
        if content is None:
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_bytes(content)
    with pytest.raises(statefile.StateError) as got:
        statefile.load(tmp_path)
    assert str(got.value).startswith(f"saved state {tmp_path / 'state.json'} {expected}")
    with pytest.raises(prefs.PrefsError) as got_prefs:
        prefs.load(tmp_path)
    assert str(got_prefs.value).startswith(f"{tmp_path / 'prefs.json'} {expected}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_a_state_file_we_may_not_read_is_named(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{}")
    (tmp_path / "state.json").chmod(0)
    with pytest.raises(statefile.StateError, match="cannot be read: Permission denied"):
        statefile.load(tmp_path)


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """agent.pid locked as a running agent holds it; write what it says into it."""
    path = tmp_path / "agent.pid"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield path
    finally:
        os.close(fd)


@pytest.mark.parametrize("content", ["\u00b2\n", "0\n", "99999999999999999999\n"])
def test_a_pid_file_holding_no_pid_names_no_agent(tmp_path: Path, locked: Path,
                                                  content: str) -> None:
    # '²' passed str.isdigit() and failed int(); 0 would have `down` signal its own process
    # group; the huge one made os.kill raise OverflowError.
    locked.write_text(content)
    assert pidfile.running_pid(tmp_path) is None
    locked.write_text(" 4242\n")
    assert pidfile.running_pid(tmp_path) == 4242


def test_a_state_dir_that_is_a_file_is_a_pid_file_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state.json"
    not_a_dir.write_text("{}")
    with pytest.raises(pidfile.PidFileError, match="cannot be opened: Not a directory"):
        pidfile.running_pid(not_a_dir)
    with pytest.raises(pidfile.PidFileError), pidfile.hold(not_a_dir):
        pass


def test_a_symlinked_pid_file_is_refused_not_truncated(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (tmp_path / "agent.pid").symlink_to(victim)
    with pytest.raises(pidfile.PidFileError, match=r"agent\.pid cannot be opened"), \
            pidfile.hold(tmp_path):
        pass
    assert victim.read_text() == "untouched"
