"""CLI input the commands must refuse in one line with exit code 2, never a traceback."""

from __future__ import annotations

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
