"""The control channel over real HTTPS (uvicorn on loopback, a throw-away CA): the admin CLI
and the agent's enrolment and netmap stream work when they verify the server, refuse it with
one line naming the certificate problem when they do not trust it, and refuse plain HTTP off
the machine unless told --insecure."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import serve
from wiremesh.agent.client import CredentialsRefused, ServerClient, enroll
from wiremesh.agent.connection import Trust
from wiremesh.core.wire import FullMessage, open_line, parse_message
from wiremesh.lab.pki import ServerCert, make_ca_file, make_server_cert
from wiremesh.server.app import create_app
from wiremesh.wg.keys import generate_private_key, public_key_of


@dataclass
class TlsServer:
    url: str
    pki: ServerCert
    token: str


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    tokens: list[str] = []
    app = create_app(f"sqlite:///{tmp_path}/s.db", on_admin_token=tokens.append,
                     poll_interval=0.2)
    pki = make_server_cert(tmp_path / "pki", ["127.0.0.1"])
    with serve(app, tls=(pki.cert_file, pki.key_file)) as url:
        yield TlsServer(url, pki, tokens[0])


def wiremesh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wiremesh", *args], capture_output=True,
                          text=True, timeout=60)


def admin(srv: TlsServer, *args: str, ca_file: Path | None = None) -> subprocess.CompletedProcess:
    return wiremesh(*args, "--server", srv.url, "--token", srv.token,
                    "--ca-file", str(ca_file or srv.pki.ca_file))


def one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


async def test_enrol_and_stream_over_verified_tls(tls_server: TlsServer) -> None:
    res = admin(tls_server, "keys", "create", "k", "--reusable", "--json")
    assert res.returncode == 0, res.stderr
    import json

    key = json.loads(res.stdout)["key"]
    trust = Trust(str(tls_server.pki.ca_file))
    me = public_key_of(generate_private_key())
    got = await enroll(tls_server.url, {
        "setup_key": key, "public_key": me,
        "hostname": "a", "endpoints": ["192.0.2.7:51820"]}, trust)
    client = ServerClient([tls_server.url], got["token"], trust)
    try:
        async for line in client.netmap_stream(0):
            msg = parse_message(open_line(got["server_key"]["public_key"], me, line))
            if msg.type != "ping":  # keepalives may come first for a peer this new
                break
    finally:
        await client.close()
    assert isinstance(msg, FullMessage) and msg.netmap.overlay_ip == got["overlay_ip"]


def test_wrong_ca_is_refused_with_the_certificate_problem(tls_server: TlsServer,
                                                          tmp_path: Path) -> None:
    other = make_ca_file(tmp_path / "other-ca.pem")
    state = tmp_path / "state"
    res = wiremesh("up", "--server", tls_server.url, "--setup-key", "wmk_x",
                   "--ca-file", str(other), "--state-dir", str(state))
    assert one_error_line(res) == (
        f"error: cannot reach the server at {tls_server.url}: "
        "certificate verify failed: unable to get local issuer certificate")
    assert not (state / "state.json").exists()
    # The system's CAs do not know the lab CA either; the admin CLI says the same.
    res = wiremesh("peers", "list", "--server", tls_server.url, "--token", tls_server.token)
    assert "certificate verify failed: unable to get local issuer certificate" in (
        one_error_line(res))
    # --insecure gets through, and says what it gives up.
    res = wiremesh("peers", "list", "--server", tls_server.url, "--token", tls_server.token,
                   "--insecure", "--json")
    assert res.returncode == 0, res.stderr
    assert "read tokens and setup keys and forge netmaps" in res.stderr


def test_plain_http_off_the_machine_is_refused_before_any_connection(tmp_path: Path) -> None:
    # 192.0.2.1 does not exist here: a connection attempt would time out, not refuse.
    res = wiremesh("up", "--server", "http://192.0.2.1:8080", "--setup-key", "wmk_x",
                   "--state-dir", str(tmp_path / "state"))
    assert "refusing plain http:// to 192.0.2.1" in one_error_line(res)
    res = wiremesh("peers", "list", "--server", "http://192.0.2.1:8080", "--token", "wma_x")
    assert "--insecure" in one_error_line(res)
    help_text = " ".join(wiremesh("up", "--help").stdout.split())
    assert "Anyone on the path can then read admin tokens, peer tokens and setup keys" in (
        re.sub(r"[│ ]+", " ", help_text))


def test_unreachable_server_names_the_cause(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"https://127.0.0.1:{s.getsockname()[1]}"
    expected = f"error: cannot reach the server at {url}: connection refused"
    res = wiremesh("up", "--server", url, "--setup-key", "wmk_x",
                   "--state-dir", str(tmp_path / "state"))
    assert one_error_line(res) == expected
    assert one_error_line(wiremesh("peers", "list", "--server", url, "--token", "x")) == expected


async def test_unknown_token_is_refused_credentials_not_a_deleted_peer(
        tls_server: TlsServer) -> None:
    # What an agent hears from a server restored from an old backup: a 401, which must not
    # read as "this peer was deleted" (the agent would tear its mesh down).
    client = ServerClient([tls_server.url], "wmp_unknown", Trust(str(tls_server.pki.ca_file)))
    try:
        with pytest.raises(CredentialsRefused, match="refuses this peer's token"):
            await client.report_endpoints(51820, [], [])
        with pytest.raises(CredentialsRefused):
            await anext(aiter(client.netmap_stream(0)))
    finally:
        await client.close()


def test_wrong_server_fingerprint_refuses_before_the_setup_key_is_sent(
        tls_server: TlsServer, tmp_path: Path) -> None:
    made = admin(tls_server, "keys", "create", "k", "--json")
    assert made.returncode == 0, made.stderr
    import json

    key = json.loads(made.stdout)
    real = key["server_fingerprint"]
    assert real.startswith("SHA256:")
    shown = admin(tls_server, "keys", "create", "k2")
    assert f"--server-fingerprint {real}" in " ".join(shown.stdout.split())
    state = tmp_path / "state"
    wrong = "SHA256:" + "A" * 43
    res = wiremesh("up", "--server", tls_server.url, "--setup-key", key["key"],
                   "--ca-file", str(tls_server.pki.ca_file), "--state-dir", str(state),
                   "--server-fingerprint", wrong)
    assert one_error_line(res) == (
        f"error: server key fingerprint is {real}, expected {wrong}: refusing to enrol")
    assert not (state / "state.json").exists()
    listed = admin(tls_server, "keys", "list", "--json")
    assert {k["name"]: k["used_count"] for k in json.loads(listed.stdout)}["k"] == 0
