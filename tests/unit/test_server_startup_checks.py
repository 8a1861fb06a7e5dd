"""`wiremesh server` start-up: what can fail is refused in one line (exit code 2) before the
store is touched, since the store's first start prints the initial admin token once, and a
failure after that lost it; the files it writes are its user's alone."""

from __future__ import annotations

import inspect
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.unit.test_relay_refusals import upgrade_with_a_big_header
from wiremesh.cli.server import server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(port: int, db: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "wiremesh", "server", "--listen", f"127.0.0.1:{port}",
            "--db", db, "--stun-listen", "off", *args]


def usual_umask() -> None:
    # Under umask 077 every new file is private anyway: run under the common 022.
    os.umask(0o022)


def refused(tmp_path: Path, port: int, *args: str) -> str:
    """The one error line of a server start that must fail before bootstrapping its store."""
    run = subprocess.run(command(port, f"sqlite:///{tmp_path}/s.db", *args),
                         capture_output=True, text=True, timeout=60)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, (run.returncode, run.stderr)
    assert "admin token" not in run.stdout
    with sqlite3.connect(tmp_path / "s.db") as db:  # reached, never migrated
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    return lines[0]


def test_the_default_database_is_an_absolute_path() -> None:
    # Three slashes were a path relative to the working directory: a server started
    # elsewhere silently began an empty mesh with a new signing key.
    default = inspect.signature(server).parameters["db"].default.default
    assert default == "sqlite:////var/lib/wiremesh/server.db"


def test_listen_address_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused(tmp_path, port)
    assert line == f"error: cannot listen on 127.0.0.1:{port}: address already in use"


def test_relay_secret_file_that_cannot_be_written(tmp_path: Path) -> None:
    line = refused(tmp_path, free_port(), "--relay-secret-file", "/proc/nope/secret")
    assert line == ("error: --relay-secret-file /proc/nope/secret: cannot write it: "
                    "no such file or directory")


def test_admin_token_file_that_is_a_directory(tmp_path: Path) -> None:
    line = refused(tmp_path, free_port(), "--admin-token-file", str(tmp_path))
    assert line == f"error: --admin-token-file {tmp_path}: is a directory"


def test_admin_token_reaches_its_file_after_a_start_refused_for_it(tmp_path: Path) -> None:
    line = refused(tmp_path, free_port(), "--admin-token-file", "/proc/nope/tok")
    assert line == ("error: --admin-token-file /proc/nope/tok: cannot create its directory: "
                    "no such file or directory")
    # The same store, a path that works: the token was not made (and lost) by the start
    # refused; the directory made for the file is private.
    token_file = tmp_path / "etc" / "token"
    port = free_port()
    out = started(command(port, f"sqlite:///{tmp_path}/s.db", "--admin-token-file",
                          str(token_file)), tmp_path, port)
    shown = "initial admin token (shown once): "
    token = next(line for line in out if line.startswith(shown)).removeprefix(shown)
    assert token.startswith("wma_") and token_file.read_text() == token + "\n"
    assert (mode(token_file), mode(token_file.parent)) == (0o600, 0o700)


def test_relative_database_is_named_and_files_left_readable_are_made_private(
        tmp_path: Path) -> None:
    # A token file made readable by hand (or an older version) stays no longer so.
    token_file = tmp_path / "token"
    token_file.write_text("old\n")
    token_file.chmod(0o644)
    port = free_port()
    out = started(command(port, "sqlite:///state/s.db", "--admin-token-file", "token"),
                  tmp_path, port)
    assert out[0] == f"database: {tmp_path}/state/s.db"
    assert token_file.read_text().startswith("wma_") and mode(token_file) == 0o600
    assert (mode(tmp_path / "state"), mode(tmp_path / "state" / "s.db")) == (0o700, 0o600)


def started(cmd: list[str], cwd: Path, port: int) -> list[str]:
    """Start the server, wait until it answers, stop it: its output lines."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=usual_umask)
    try:
        deadline = time.monotonic() + 60
        while not up(port):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.1)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    return out.splitlines()


def up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).is_success
    except httpx.HTTPError:
        return False


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_upgrade_with_an_oversized_header_is_answered_at_once(tmp_path: Path) -> None:
    # uvicorn's own WebSocket protocol left it unanswered for as long as the client waited,
    # on any path and before any authentication.
    port = free_port()
    proc = subprocess.Popen(command(port, f"sqlite:///{tmp_path}/s.db"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not up(port):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.1)
        answer = upgrade_with_a_big_header(f"http://127.0.0.1:{port}")
        assert answer.startswith(b"HTTP/1.1 431 "), answer
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
