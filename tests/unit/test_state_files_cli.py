"""`wiremesh up/agent/down/set` on damaged, mistyped or unsafe state dirs: one error line and
exit code 2, never a traceback, and nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NoReturn

import pytest
from typer.testing import CliRunner

from tests.unit.test_cli_errors import one_line_error
from wiremesh.agent import runner
from wiremesh.cli.main import app

DEEP = "[" * 100_000 + "]" * 100_000  # json raised RecursionError on it
CONFIG = {"server": "http://192.0.2.1:8080", "peer_id": 1, "name": "a", "token": "wmp_x",
          "overlay_ip": "100.64.0.1", "overlay_prefix_len": 10, "interface": "wm0",
          "listen_port": 51820, "endpoints": []}
# Every case fails on the state dir before any server is contacted.
UP = ["up", "--server", "http://127.0.0.1:9", "--setup-key", "wmk_x"]


@pytest.fixture(autouse=True)
def no_agent_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Had a command accepted what it should refuse, the agent ran here for real, as root
    bringing up an interface on this host: fail instead."""
    def refuse(*args: object) -> NoReturn:
        pytest.fail("the agent would have run")

    monkeypatch.setattr(runner, "run_forever", refuse)


def enrolled(state_dir: Path) -> Path:
    state_dir.mkdir(mode=0o700, exist_ok=True)
    (state_dir / "state.json").write_text(json.dumps({"config": CONFIG}))
    return state_dir


def test_deeply_nested_state_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(DEEP)
    line = one_line_error(["agent", "--state-dir", str(tmp_path)])
    assert line == f"error: saved state {tmp_path / 'state.json'} is unreadable: its JSON " \
                   "nests too deeply"
    # `down` needs the state only to name the interface: it still stops (here: finds no)
    # agent rather than refusing.
    res = CliRunner().invoke(app, ["down", "--state-dir", str(tmp_path)])
    assert res.exit_code == 0 and res.exception is None, (res.output, res.exception)
    assert " ".join(res.output.split()) == f"no agent runs from {tmp_path}"


@pytest.mark.parametrize("command", ["set", "agent"])
def test_deeply_nested_prefs_is_one_line(tmp_path: Path, command: str) -> None:
    (enrolled(tmp_path) / "prefs.json").write_text(DEEP)
    args = ["--exit-node", "auto"] if command == "set" else []
    line = one_line_error([command, "--state-dir", str(tmp_path), *args])
    assert line == f"error: {tmp_path / 'prefs.json'} is unreadable: its JSON nests too deeply"
    assert (tmp_path / "prefs.json").read_text() == DEEP


@pytest.mark.parametrize("command", [["down"], ["agent"], ["set", "--exit-node", "auto"], UP])
def test_a_state_dir_that_is_a_file_is_one_line(tmp_path: Path, command: list[str]) -> None:
    # `down` ended in NotADirectoryError from the pid file.
    state = enrolled(tmp_path) / "state.json"
    line = one_line_error([*command, "--state-dir", str(state)])
    assert line == f"error: state dir {state} is not a directory"


def test_set_on_a_mistyped_state_dir_creates_nothing(tmp_path: Path) -> None:
    # It made the directory and a prefs.json no agent reads, and said "saved".
    missing = tmp_path / "typo" / "wiremesh"
    line = one_line_error(["set", "--state-dir", str(missing), "--exit-node", "auto"])
    assert line == f"error: no saved state in {missing}; enrol first with `wiremesh up`"
    assert list(tmp_path.iterdir()) == []


def test_set_on_an_enrolled_state_dir_saves(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["set", "--state-dir", str(enrolled(tmp_path)),
                                   "--exit-node", "auto"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert json.loads((tmp_path / "prefs.json").read_text())["exit_node"] == "auto"


COMMANDS = [["down"], ["agent"], ["set", "--exit-node", "auto"], UP]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_state_dir_others_may_write_is_refused(tmp_path: Path, command: list[str]) -> None:
    # Whoever writes there can swap the private key, the pinned server key or the pid file.
    state_dir = enrolled(tmp_path / "s")
    state_dir.chmod(0o777)
    before = sorted(state_dir.iterdir())
    line = one_line_error([*command, "--state-dir", str(state_dir)])
    assert line == f"error: state dir {state_dir} is writable by others (mode 0777), who " \
                   f"could replace its private key or saved state; `chmod go-w {state_dir}`"
    assert sorted(state_dir.iterdir()) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_a_state_dir_of_another_user_is_refused(tmp_path: Path, command: list[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir = enrolled(tmp_path / "s")
    if os.geteuid() == 0:
        os.chown(state_dir, 1234, -1)  # root's own dirs pass: make it someone else's
        owner = 1234
    else:  # no chown without root: be someone else instead
        owner = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    line = one_line_error([*command, "--state-dir", str(state_dir)])
    assert line.startswith(f"error: state dir {state_dir} belongs to another user "
                           f"(uid {owner}), who could replace"), line
    assert not (state_dir / "prefs.json").exists()


@pytest.mark.parametrize("bad", ["dir", "binary", "junk"])
def test_agent_with_an_unusable_private_key_is_one_line(tmp_path: Path, bad: str) -> None:
    state_dir = enrolled(tmp_path / "s")
    key = state_dir / "private.key"
    if bad == "dir":
        key.mkdir()
    else:
        key.write_bytes(b"\xff\xfe" if bad == "binary" else b"not a key\n")
    line = one_line_error(["agent", "--state-dir", str(state_dir)])
    assert f"the private key {key} cannot be used" in line, line
