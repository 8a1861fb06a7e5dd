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


class AlreadyRunning(RuntimeError):
    pass


def _path(state_dir: Path) -> Path:
    return state_dir / "agent.pid"


@contextlib.contextmanager
def hold(state_dir: Path) -> Iterator[None]:
    """Write and lock the pid file while the block runs; AlreadyRunning if another holds it."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(_path(state_dir), os.O_RDWR | os.O_CREAT, 0o644)
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
        fd = os.open(_path(state_dir), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        return None  # nobody holds it: a leftover of an agent that died
    finally:
        os.close(fd)
