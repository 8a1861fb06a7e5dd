"""The walking skeleton end to end: real server, real agents, real wireguard-go tunnels."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from wiremesh.lab.demo import run_demo
from wiremesh.lab.netns import new_run_id

pytestmark = pytest.mark.e2e


def test_demo_mesh_survives_server_death_and_leaves_nothing() -> None:
    run_id = new_run_id()
    result = run_demo(4, Console(quiet=True), run_id=run_id)
    assert result["peers"] == 4 and result["pairs_total"] == 12
    assert result["pairs_ok"] == 12, result
    assert result["pairs_ok_server_down"] == 12, result
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert run_id not in namespaces
    assert not list(Path("/var/run/wireguard").glob(f"{run_id}*"))
    procs = subprocess.run(["pgrep", "-af", f"wireguard-go.*{run_id}"], capture_output=True,
                           text=True).stdout
    assert procs == ""
