"""CLI input the commands must refuse in one line with exit code 2, never a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wiremesh.cli.main import app

runner = CliRunner()
# Never contacted: every case fails on its input first.
ADMIN = ["--server", "http://127.0.0.1:9", "--token", "wma_x"]


def one_line_error(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, (res.output, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    f = tmp_path / "policy.yaml"
    f.write_bytes(b"groups: {}\n\xff\xfe\x00")
    return f


@pytest.mark.parametrize("command", ["apply", "diff"])
def test_policy_file_not_utf8_or_unreadable(tmp_path: Path, binary: Path, command: str) -> None:
    line = one_line_error(["policy", command, str(binary), *ADMIN])
    assert line == f"error: FILE: {binary} is not UTF-8 text (byte 12 is 0xff)"
    line = one_line_error(["policy", command, str(tmp_path), *ADMIN])
    assert line == f"error: FILE: cannot read {tmp_path}: Is a directory"


@pytest.mark.parametrize("command", ["apply", "diff"])
def test_policy_file_too_large_or_endless(tmp_path: Path, command: str) -> None:
    # Read whole first: /dev/zero ran until memory was gone.
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * ((1 << 20) + 1))
    for path in (big, Path("/dev/zero")):
        line = one_line_error(["policy", command, str(path), *ADMIN])
        assert line == f"error: FILE: {path} is larger than 1048576 bytes (1 MiB), the limit"


def test_gateway_private_key_file_not_utf8(tmp_path: Path, binary: Path) -> None:
    line = one_line_error(["gateway", "enrol", "--private-key-file", str(binary), *ADMIN[:2],
                           "--setup-key", "wmk_x", "--server-state", str(tmp_path / "s")])
    assert "--private-key-file" in line and "not UTF-8 text" in line


def test_relay_secret_file_not_utf8(binary: Path) -> None:
    line = one_line_error(["relay", "--secret-file", str(binary), "--server",
                           "http://127.0.0.1:9"])
    assert "relay secret file" in line and "not UTF-8 text" in line


@pytest.mark.parametrize("url", ["http://[::1", "https://mesh.example:99999"])
def test_malformed_server_urls(url: str) -> None:
    line = one_line_error(["peers", "list", "--server", url, "--token", "wma_x"])
    assert line.startswith(f"error: server URL {url!r}: ")


def test_user_input_is_printed_as_given_not_as_emoji(tmp_path: Path) -> None:
    # Rich turned ':abc:' into an emoji: the wrong fingerprint was shown as 'SHA256🔤'.
    line = one_line_error(["peers", "list", "--server", "https://a:x:abc:", "--token", "t"])
    assert ":abc:" in line


@pytest.fixture
def odd_server() -> Iterator[tuple[str, list[tuple[int, str, bytes]], list[str]]]:
    """An HTTP server on loopback that is no wiremesh server: it answers every request with
    the (status, content type, body) last put in the list it yields with its URL, and
    notes each request's method and path in the other list it yields."""
    answers: list[tuple[int, str, bytes]] = [(200, "application/json", b"{}")]
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            asked.append(f"{self.command} {self.path}")
            status, ctype, body = answers[-1]
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", answers, asked
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(("answer", "command", "expected"), [
    ((200, "text/html", b"<html>login</html>"), ["peers", "list"],
     "to GET /api/v1/peers is not a JSON list of objects (HTTP 200, text/html)"),
    ((200, "application/json", b"[1, 2]"), ["peers", "list"], "is not a JSON list of objects"),
    ((200, "application/json", b"null"), ["keys", "create", "k"], "is not a JSON object"),
    ((200, "application/json", b"not json"), ["policy", "matrix"], "is not a JSON object"),
    ((200, "application/json", b"{}"), ["policy", "explain", "a", "b"],
     "has no field 'allowed': is it a wiremesh server of this version?"),
    ((200, "application/json", b'{"name": "k"}'), ["tokens", "create", "t"],
     "has no field 'role'"),
    ((500, "application/json", b"[]"), ["groups", "list"], "error: [] (HTTP 500)"),
    ((502, "text/html", b"<html>\n bad gateway\n</html>"), ["routes", "list"],
     "error: <html> bad gateway </html> (HTTP 502)"),
    ((400, "application/problem+json", b'{"detail": 5}'), ["audit"], '{"detail": 5} (HTTP 400)'),
    # A redirect's empty body was taken for success: "revoked admin token t".
    ((307, "text/plain", b""), ["tokens", "revoke", "t"],
     "to DELETE /api/v1/admin-tokens/t is a redirect to nowhere (HTTP 307)"),
])
def test_a_server_that_answers_garbage(odd_server, answer, command, expected) -> None:
    url, answers, _ = odd_server
    answers.append(answer)
    line = one_line_error([*command, "--server", url, "--token", "wma_x"])
    assert expected in line, line


@pytest.mark.parametrize("answer", [(200, "text/html", b"<html>hi</html>"),
                                    (200, "application/json", b"[1]")])
def test_up_against_a_server_that_answers_garbage(tmp_path: Path, odd_server, answer) -> None:
    url, answers, _ = odd_server
    answers.append(answer)
    line = one_line_error(["up", "--server", url, "--setup-key", "wmk_x",
                           "--state-dir", str(tmp_path)])
    assert f"GET {url}/api/v1/server-key answered HTTP 200 with no JSON object" in line, line


def _server_fails(tmp_path: Path, *args: str) -> str:
    """`wiremesh server` with `args` must stop before serving: one line, exit code 2 (the
    port it would listen on is never bound: every case fails first)."""
    run = subprocess.run([sys.executable, "-m", "wiremesh", "server", "--listen",
                          "127.0.0.1:9", "--db", f"sqlite:///{tmp_path}/s.db", *args],
                         capture_output=True, text=True, timeout=60)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, (run.returncode, run.stderr)
    return lines[0]


def test_server_database_down_is_one_line(tmp_path: Path) -> None:
    # It was uvicorn's lifespan traceback. The password is not shown.
    line = _server_fails(tmp_path, "--db", "postgresql://wm:hunter2@127.0.0.1:9/wm")
    assert line == ("error: --db postgresql://wm:***@127.0.0.1:9/wm: cannot connect: "
                    "connection refused")


def test_server_stun_port_taken_is_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        line = _server_fails(tmp_path, "--stun-listen", f"127.0.0.1:{port}")
    assert line == f"error: --stun-listen 127.0.0.1:{port}: address already in use"


@pytest.mark.parametrize("url", ["wss://[::1", "wss://relay.example:99999"])
def test_server_malformed_relay_url_is_one_line(tmp_path: Path, url: str) -> None:
    assert _server_fails(tmp_path, "--stun-listen", "off", "--relay", url).startswith(
        f"error: --relay {url!r}: ")


@pytest.mark.parametrize(("content", "expected"), [
    ("[]", "is unreadable: it holds no agent configuration ('config')"),
    ("null", "is unreadable: it holds no agent configuration ('config')"),
    ('{"config": 5}', "is unreadable: "),
    (None, "cannot be read: Is a directory"),
])
def test_agent_saved_state_that_is_no_state(tmp_path: Path, content: str | None,
                                            expected: str) -> None:
    state = tmp_path / "state.json"
    if content is None:
        state.mkdir()  # was a traceback (only a missing file was expected)
    else:
        state.write_text(content)  # were KeyError/TypeError texts: "'config'"
    line = one_line_error(["agent", "--state-dir", str(tmp_path)])
    assert line.startswith(f"error: saved state {state} {expected}"), line


def test_json_output_stays_json_when_a_metric_is_nan(odd_server) -> None:
    url, answers, _ = odd_server
    answers.append((200, "text/plain", b"wiremesh_gateway_known_peers NaN\n"))
    res = runner.invoke(app, ["gateway", "status", "--metrics", f"{url}/metrics",
                              "--interval", "0.1", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout, parse_constant=pytest.fail)["known"] is None


def test_gateway_status_of_metrics_that_are_no_gateway_s(odd_server) -> None:
    # The control server's own /metrics read as a gateway knowing nothing, and exit 0.
    url, answers, _ = odd_server
    answers.append((200, "text/plain", b"wiremesh_server_streams 3\n"))
    res = runner.invoke(app, ["gateway", "status", "--metrics", f"{url}/metrics",
                              "--interval", "0.1"])
    assert res.exit_code == 1, res.output  # a runtime error, as for a gateway not there
    assert "not a wiremesh gateway's metrics" in res.output, res.output


def test_gateway_status_malformed_metrics_url() -> None:
    res = runner.invoke(app, ["gateway", "status", "--metrics", "http://[::1"])
    assert res.exit_code == 1, res.exception  # a runtime error: the gateway is not there
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.output.startswith("error: --metrics: cannot read http://[::1: "), res.output


@pytest.mark.parametrize(("command", "path"), [
    (["tokens", "revoke", "../groups/g"], "DELETE /api/v1/admin-tokens/..%2Fgroups%2Fg"),
    (["peers", "delete", "../groups/g"], "DELETE /api/v1/peers/..%2Fgroups%2Fg"),
    (["peers", "show", "a?b#c"], "GET /api/v1/peers/a%3Fb%23c"),
    (["groups", "remove", "g", "x/y"], "DELETE /api/v1/groups/g/members/x%2Fy"),
    (["routes", "delete", "r/../../groups/g"], "DELETE /api/v1/routes/r%2F..%2F..%2Fgroups%2Fg"),
])
def test_names_stay_one_path_segment(odd_server, command: list[str], path: str) -> None:
    # `tokens revoke ../groups/g` deleted group g: httpx resolved the dot segments.
    url, answers, asked = odd_server
    answers.append((204, "application/json", b""))
    res = runner.invoke(app, [*command, "--server", url, "--token", "wma_x"])
    assert asked == [path], (asked, res.output)


@pytest.mark.parametrize(("command", "expected"), [
    (["tokens", "revoke", ""], "error: NAME: '' names nothing"),
    (["peers", "show", "."], "error: PEER: '.' names nothing"),
    (["groups", "delete", ".."], "error: NAME: '..' names nothing"),
    (["groups", "remove", "g", ""], "error: PEER: '' names nothing"),
])
def test_empty_or_dot_names_are_refused(odd_server, command: list[str], expected: str) -> None:
    url, _, asked = odd_server
    assert one_line_error([*command, "--server", url, "--token", "wma_x"]) == expected
    assert asked == []


def test_up_refuses_a_bad_metrics_address_before_enrolling(tmp_path: Path, odd_server) -> None:
    # It was parsed once enrolled: the one-time setup key was spent, the agent never ran.
    url, _, asked = odd_server
    line = one_line_error(["up", "--server", url, "--setup-key", "wmk_x", "--state-dir",
                           str(tmp_path), "--metrics-listen", "127.0.0.1:99999"])
    assert line.startswith("error: --metrics-listen '127.0.0.1:99999'") and asked == []


def test_a_bad_exit_node_is_named_without_pydantic_s_prefix(tmp_path: Path) -> None:
    line = one_line_error(["set", "--state-dir", str(tmp_path), "--exit-node", "\u00fc"])
    assert line.startswith("error: exit_node: bad name '\u00fc': 1-63 ASCII letters"), line


@pytest.mark.parametrize("name", ["web.", "a..b", "web-"])
def test_up_refuses_a_name_dns_cannot_carry_before_enrolling(tmp_path: Path, odd_server,
                                                             name: str) -> None:
    url, _, asked = odd_server
    line = one_line_error(["up", "--server", url, "--setup-key", "wmk_x", "--state-dir",
                           str(tmp_path), "--name", name])
    assert line.startswith(f"error: --name: bad peer name '{name}'") and asked == [], line


def _problem(detail: str, *errors: dict) -> tuple[int, str, bytes]:
    body = {"type": "about:blank", "title": "t", "status": 422, "detail": detail}
    return 422, "application/problem+json", json.dumps({**body, "errors": list(errors)}).encode()


def test_server_text_in_an_error_is_printed_as_given(odd_server) -> None:
    # Brackets in what the server says are no markup: '[x]' and '[/]' come out intact.
    url, answers, _ = odd_server
    answers.append(_problem("no group '[x]' in [/] [bold]y", {"message": "no group '[x]'"}))
    line = one_line_error(["groups", "list", "--server", url, "--token", "wma_x"])
    assert line == "error: no group '[x]' in [/] [bold]y (HTTP 422)"


def test_each_fault_of_an_error_answer_is_shown(odd_server) -> None:
    # Only the detail was printed: "2 policy test(s) failed; nothing was changed", not which.
    url, answers, _ = odd_server
    answers.append(_problem(
        "2 policy test(s) failed; nothing was changed",
        {"line": 7, "field": "tests", "message": "line 7: a -> b tcp/22, got deny: [devs]"},
        {"field": "name", "message": "bad\n  name"}))
    res = runner.invoke(app, ["policy", "matrix", "--server", url, "--token", "wma_x"])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.splitlines() == [
        "error: 2 policy test(s) failed; nothing was changed (HTTP 422)",
        "  line 7: tests: a -> b tcp/22, got deny: [devs]", "  name: bad name"]
    # --json: the problem body on stdout too, for scripts.
    res = runner.invoke(app, ["policy", "matrix", "--server", url, "--token", "wma_x",
                              "--json"])
    assert res.exit_code == 2 and len(json.loads(res.stdout)["errors"]) == 2


def test_faults_the_detail_already_says_are_not_repeated(odd_server) -> None:
    url, answers, _ = odd_server
    answers.append(_problem("name: too long; role: bad", {"field": "name", "message": "too long"},
                            {"field": "role", "message": "bad"}))
    line = one_line_error(["tokens", "create", "t", "--server", url, "--token", "wma_x"])
    assert line == "error: name: too long; role: bad (HTTP 422)"


def test_server_text_in_a_table_is_printed_as_given(odd_server) -> None:
    # Every console prints without markup: a '[web]' in a name or note stays (it vanished).
    url, answers, _ = odd_server
    entry = {"at": "t", "actor": "[admin]", "action": "x", "detail": "[bold]groups [web]"}
    answers.append((200, "application/json", json.dumps([entry]).encode()))
    res = runner.invoke(app, ["audit", "--server", url, "--token", "wma_x"])
    assert res.exit_code == 0, res.output
    assert "[admin]" in res.stdout and "[bold]groups [web]" in res.stdout
