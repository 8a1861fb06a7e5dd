"""`wiremesh lab up` leaves a mesh running, `lab shell` reaches into its hosts, `lab down`
removes all of it."""

from __future__ import annotations

import json
import subprocess

import pytest

from wiremesh.lab.explore import RECORD
from wiremesh.lab.mesh import wiremesh_cmd
from wiremesh.lab.netns import missing_requirements

pytestmark = pytest.mark.e2e

if missing := missing_requirements():
    pytest.skip(f"lab needs: {', '.join(missing)}", allow_module_level=True)


def wm(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(wiremesh_cmd(*args), capture_output=True, text=True, timeout=timeout)


def test_lab_up_shell_down() -> None:
    if RECORD.exists():
        pytest.skip(f"a lab is up on this machine ({RECORD}); not touching it")
    up = wm("lab", "up", "--peers", "2")
    try:
        assert up.returncode == 0, up.stderr
        assert "wiremesh lab shell a1" in up.stdout and "token" in up.stdout
        record = json.loads(RECORD.read_text())
        # The admin CLI inside a lab shell finds the lab's server without options.
        peers = wm("lab", "shell", "srv", *wiremesh_cmd("peers", "list", "--json"))
        assert peers.returncode == 0, peers.stderr
        a2 = next(p for p in json.loads(peers.stdout.splitlines()[-1]) if p["name"] == "a2")
        ping = wm("lab", "shell", "a1", "ping", "-c", "1", "-W", "5", a2["overlay_ip"])
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert wm("lab", "shell", "nosuch").returncode == 2
        assert wm("lab", "up").returncode == 1  # one at a time
    finally:
        down = wm("lab", "down")
    assert down.returncode == 0, down.stderr
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert record["run_id"] not in namespaces
    assert not RECORD.exists()
    assert wm("lab", "down").returncode == 2
