"""How the relays (embedded and standalone) turn peers away: 401 when the token was checked
and is not valid, 503 with Retry-After when it could not be checked, nothing at ERROR in the
log for a refusal, and `wiremesh relay` checking its secret at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from tests.conftest import serve
from wiremesh.agent.relay_link import relay_urls
from wiremesh.cli.main import app as cli
from wiremesh.relay.standalone import create_relay_app
from wiremesh.server.app import create_app

SECRET = "relay-secret-for-tests"
WRONG = "not-the-relay-secret-of-the-server"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with serve(create_app(f"sqlite:///{tmp_path}/s.db", relay_secret=SECRET)) as url:
        yield url


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Records at ERROR, uvicorn's included (its loggers do not propagate to the root)."""
    server_log = logging.getLogger("uvicorn.error")
    server_log.addHandler(caplog.handler)
    caplog.set_level(logging.ERROR)
    try:
        yield caplog
    finally:
        server_log.removeHandler(caplog.handler)


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def refusal(base: str, token: str | None) -> Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with pytest.raises(InvalidStatus) as e:
        async with connect(relay_urls(base, ["/api/v1/relay"])[0], additional_headers=headers,
                           open_timeout=5):
            pass
    return e.value.response


@contextlib.contextmanager
def standalone(server: str, secret: str = SECRET) -> Iterator[str]:
    with serve(create_relay_app(server, secret)) as url:
        yield url


@pytest.mark.parametrize("where", ["embedded", "standalone"])
async def test_refused_peers_leave_nothing_at_error_in_the_log(
        server: str, errors: pytest.LogCaptureFixture, where: str) -> None:
    with contextlib.ExitStack() as stack:
        base = server if where == "embedded" else stack.enter_context(standalone(server))
        for token in (None, "wm_peer_not-a-real-token", "x" * 600):
            r = await refusal(base, token)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        await asyncio.sleep(0.2)  # the server logs once the app has returned
    assert not errors.records, [r.getMessage() for r in errors.records]


@pytest.mark.parametrize("case", ["wrong secret", "server down"])
async def test_a_relay_that_cannot_check_tokens_answers_503(server: str, case: str) -> None:
    upstream, secret = (server, WRONG) if case == "wrong secret" else (dead_url(), SECRET)
    with standalone(upstream, secret) as base:
        r = await refusal(base, "wm_peer_some-token")
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    assert b"cannot check credentials" in r.body


async def test_credentials_that_cannot_be_checked_log_one_line_not_one_each(
        errors: pytest.LogCaptureFixture) -> None:
    with standalone(dead_url()) as base:
        for _ in range(5):
            assert (await refusal(base, "wm_peer_some-token")).status_code == 503
        await asyncio.sleep(0.2)  # the server logs once the app has returned
    said = [r.getMessage() for r in errors.records]
    assert len(said) == 1 and "cannot check peers' credentials" in said[0], said


def one_line_error(args: list[str]) -> str:
    """The one error line of a relay start that must stop before serving. It is told to
    listen where something listens already, so a start that goes on ends at once too."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        res = CliRunner().invoke(cli, ["relay", "--listen", listen, *args])
    assert res.exit_code == 2, (res.output, res.exception)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def secret_file(tmp_path: Path, secret: str) -> Path:
    f = tmp_path / "relay.secret"
    f.write_text(secret + "\n")
    return f


def test_relay_start_refuses_a_secret_the_server_refuses(server: str, tmp_path: Path) -> None:
    line = one_line_error(["--server", server,
                           "--secret-file", str(secret_file(tmp_path, WRONG))])
    assert "refuses this relay secret" in line and server in line


def test_relay_start_refuses_a_server_without_relay_secret(tmp_path: Path) -> None:
    with serve(create_app(f"sqlite:///{tmp_path}/s.db")) as url:
        line = one_line_error(["--server", url,
                               "--secret-file", str(secret_file(tmp_path, SECRET))])
    assert "--relay-secret-file" in line


def relay_up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).is_success
    except httpx.HTTPError:
        return False


@pytest.fixture
def relay_process(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`wiremesh relay` whose server is down: it warns and serves anyway."""
    base = dead_url()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wiremesh", "relay", "--listen", base.removeprefix("http://"),
         "--server", dead_url(), "--secret-file", str(secret_file(tmp_path, SECRET))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not relay_up(base):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(30)


def upgrade_with_a_big_header(base: str) -> bytes:
    """The first bytes of the answer to a WebSocket upgrade whose one header is 9000 bytes
    (over the websockets library's 8 KiB line limit)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-A: " + b"a" * 9000 + b"\r\n"
                  b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        return s.recv(64)  # a hang is a socket.timeout


async def test_relay_process_answers_at_once_and_logs_no_refusal_error(
        relay_process: tuple[str, subprocess.Popen[str]]) -> None:
    base, proc = relay_process
    assert upgrade_with_a_big_header(base).startswith(b"HTTP/1.1 431 ")
    assert (await refusal(base, None)).status_code == 401
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    assert "warning: cannot reach the server" in stderr and "starting anyway" in stderr
    assert "ERROR" not in stderr, stderr
