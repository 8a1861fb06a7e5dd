"""`wiremesh policy` output against a real server (uvicorn on loopback): server text printed
whole, a failing apply naming each failed test, diff's exit status, what explain asked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from tests.conftest import serve
from wiremesh.cli.main import app
from wiremesh.server.app import create_app
from wiremesh.wg.keys import generate_private_key, public_key_of

POLICY = """\
groups: {devs: [alice], web: [web1], db: [db1]}
policies:
  - {name: devs-to-web, sources: [devs], destinations: [web], proto: tcp, ports: [22, 443]}
  - {name: web-to-db, sources: [web], destinations: [db], proto: tcp, ports: [5432]}
  - {name: ping-everyone, sources: [devs], destinations: [all], proto: icmp}
tests:
  - {src: alice, dst: web1, proto: tcp, port: 443, expect: allow}
  - {src: alice, dst: db1, proto: tcp, port: 5432, expect: deny}
  - {src: db1, dst: web1, proto: tcp, port: 22, expect: deny}
"""
# The two deny tests (lines 8 and 9) turned into allow tests: both fail.
FAILING = POLICY.replace("expect: deny}", "expect: allow}")
runner = CliRunner()


@dataclass
class Mesh:
    admin: list[str]  # --server and --token
    ids: dict[str, int]  # peer name -> id
    ok: Path  # POLICY, as applied
    failing: Path


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Three peers under POLICY."""
    tmp = tmp_path_factory.mktemp("mesh")
    tokens: list[str] = []
    server = create_app(f"sqlite:///{tmp}/s.db", on_admin_token=tokens.append,
                        poll_interval=0.2)
    with serve(server) as url:
        c = httpx.Client(base_url=f"{url}/api/v1",
                         headers={"Authorization": f"Bearer {tokens[0]}"})
        key = c.post("/setup-keys", json={"name": "k", "reusable": True}).json()["key"]
        ids = {}
        for name in ("alice", "web1", "db1"):
            r = c.post("/enroll", json={"setup_key": key, "hostname": name,
                                        "public_key": public_key_of(generate_private_key())})
            assert r.status_code == 201, r.text
            ids[name] = r.json()["peer_id"]
        assert c.post("/policy/apply", json={"text": POLICY}).status_code == 200
        (tmp / "ok.yaml").write_text(POLICY)
        (tmp / "failing.yaml").write_text(FAILING)
        yield Mesh(["--server", url, "--token", tokens[0]], ids, tmp / "ok.yaml",
                   tmp / "failing.yaml")


def run(mesh: Mesh, *args: str) -> Result:
    res = runner.invoke(app, [*args, *mesh.admin])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res


def help_of(command: str) -> str:
    """`wiremesh policy COMMAND --help`, wide enough that no sentence is broken."""
    res = runner.invoke(app, ["policy", command, "--help"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    return res.stdout


def test_explain_prints_group_lists_as_they_are(mesh: Mesh) -> None:
    # Rich took '[web]' for a style tag: "... destination groups " and nothing after it.
    res = run(mesh, "policy", "explain", "alice", "db1", "--proto", "tcp", "--port", "5432")
    assert res.exit_code == 0, res.output
    assert "  devs-to-web: destination - db1 is in none of its destination groups [web]\n" in (
        res.stdout)
    assert "  web-to-db: source - alice is in none of its source groups [web]\n" in res.stdout
    assert res.stdout.startswith("DENY alice -> db1 tcp/5432: denied: no policy allows it")


def test_explain_says_what_the_default_proto_asks(mesh: Mesh) -> None:
    # "ALLOW alice -> db1 all: allowed by ping-everyone" read as "every protocol": icmp only.
    res = run(mesh, "policy", "explain", "alice", "db1")
    assert res.stdout.splitlines()[0] == (
        "ALLOW alice -> db1 (anything: some protocol or port): allowed by ping-everyone")
    asks = "all (the default) asks whether SRC may open anything at all to DST"
    assert asks in help_of("explain")
    # --json is as it was.
    out = json.loads(run(mesh, "policy", "explain", "alice", "db1", "--json").stdout)
    assert out["proto"] == "all" and out["allowed_by"] == ["ping-everyone"]
    assert out["summary"] == "alice -> db1 all: allowed by ping-everyone"


def test_explain_takes_peer_ids_as_its_help_says(mesh: Mesh) -> None:
    # It was "error: no peer named '1' (HTTP 400)".
    by_id = run(mesh, "policy", "explain", str(mesh.ids["alice"]), str(mesh.ids["db1"]),
                "--json")
    assert by_id.exit_code == 0, by_id.output
    assert by_id.stdout == run(mesh, "policy", "explain", "alice", "db1", "--json").stdout
    res = run(mesh, "policy", "explain", "99", "alice")
    assert (res.exit_code, res.stderr) == (2, "error: no peer '99' (HTTP 404)\n")


def test_diff_fails_when_the_file_s_tests_would(mesh: Mesh) -> None:
    # It exited 0 and printed "test would fail: ..." lines missing '[devs]': CI let it pass.
    res = run(mesh, "policy", "diff", str(mesh.failing))
    assert res.exit_code == 1, res.output
    fails = [x for x in res.stdout.splitlines() if x.startswith("test would fail: ")]
    assert len(fails) == 2 and fails[1].startswith("test would fail: line 9: db1 -> web1")
    assert "db1 is in none of its source groups [devs]" in fails[1]
    res = run(mesh, "policy", "diff", str(mesh.failing), "--json")
    assert res.exit_code == 1 and len(json.loads(res.stdout)["test_failures"]) == 2
    assert run(mesh, "policy", "diff", str(mesh.ok)).exit_code == 0
    assert "Exit status: 0 if the file's tests pass, 1 if any would fail" in help_of("diff")


def test_apply_names_each_failed_test(mesh: Mesh) -> None:
    # It printed only "error: 2 policy test(s) failed; nothing was changed (HTTP 422)".
    res = run(mesh, "policy", "apply", str(mesh.failing))
    assert res.exit_code == 2
    lines = res.stderr.splitlines()
    assert lines[0] == "error: 2 policy test(s) failed; nothing was changed (HTTP 422)"
    assert len(lines) == 3
    assert lines[1].startswith("  line 8: tests: alice -> db1 tcp/5432 expect allow, got deny")
    assert lines[2].startswith("  line 9: tests: db1 -> web1 tcp/22 expect allow, got deny")
    assert "[devs]" in lines[2]
    res = run(mesh, "policy", "apply", str(mesh.failing), "--json")
    assert res.exit_code == 2
    problem = json.loads(res.stdout)
    assert [e["line"] for e in problem["errors"]] == [8, 9]


def test_matrix_still_styles_deny(mesh: Mesh) -> None:
    res = run(mesh, "policy", "matrix")
    assert res.exit_code == 0 and "│ deny " in res.stdout and "[dim]" not in res.stdout
