"""The running agent's pid file in its state dir, locked for as long as the agent lives.

The lock (not the pid's mere existence) says whether an agent runs: a crashed agent leaves a
file nobody holds, and a recycled pid is never mistaken for it. It also keeps a second agent
off the same state dir. `wiremesh down` finds the agent to stop through it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from wiremesh.wg.keys import make_private_dirs

PID_MAX_LIMIT = 1 << 22  # Linux's highest pid_max


class PidFileError(RuntimeError):
    """The pid file cannot be used (its state dir is a file, unreadable, ...), said in a line."""


class AlreadyRunning(PidFileError):
    pass


def _path(state_dir: Path) -> Path:
    return state_dir / "agent.pid"


@contextlib.contextmanager
def hold(state_dir: Path) -> Iterator[None]:
    """Write and lock the pid file while the block runs; AlreadyRunning if another holds it."""
    fd = _open(state_dir, os.O_RDWR | os.O_CREAT, create_dir=True)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(
                f"an agent already runs from {state_dir} (pid {running_pid(state_dir)})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                _path(state_dir).unlink()
    finally:
        os.close(fd)


def running_pid(state_dir: Path) -> int | None:
    """The pid of the agent running from `state_dir`, or None when none holds the lock."""
    try:
        fd = _open(state_dir, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _pid(os.read(fd, 32))
        return None  # nobody holds it: a leftover of an agent that died
    finally:
        os.close(fd)


def _pid(text: bytes) -> int | None:
    """The pid a pid file holds, if it holds one. Checked as bytes: str.isdigit() takes '²'
    for a digit, which int() then refuses. Pid 0 would signal our own process group, and
    one past PID_MAX_LIMIT is no process (os.kill raised OverflowError)."""
    text = text.strip()
    pid = int(text) if text.isdigit() else 0
    return pid if 0 < pid <= PID_MAX_LIMIT else None


def _open(state_dir: Path, flags: int, create_dir: bool = False) -> int:
    """The pid file opened with `flags`; FileNotFoundError passes (no agent ran there), any
    other failure is a PidFileError naming the file. O_NOFOLLOW: the agent runs as root, and a
    symlink planted here would have it truncate whatever it points at."""
    path = _path(state_dir)
    try:
        if create_dir:
            make_private_dirs(state_dir)
        return os.open(path, flags | os.O_NOFOLLOW, 0o644)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise PidFileError(f"pid file {path} cannot be opened: {e.strerror or e}") from None
