"""The walking skeleton end to end: real server, real agents, real wireguard-go tunnels."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from wiremesh.lab.demo import run_demo
from wiremesh.lab.mesh import build_mesh
from wiremesh.lab.netns import Lab, new_run_id

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


def test_agent_reports_metrics_and_removes_its_firewall_on_stop() -> None:
    with Lab() as lab:
        mesh = build_mesh(lab, ["m1", "m2"])
        mesh.start_server()
        key = mesh.admin("keys", "create", "t", "--reusable")["key"]
        for a in mesh.agents.values():
            mesh.start_agent(a, key)
        mesh.wait_agents_configured(mesh.agents.values(), 1)
        a = mesh.agents["m1"]
        m = a.metrics()
        assert m["wiremesh_agent_peers"] == 1 and m["wiremesh_agent_netmap_version"] > 0
        tables = a.host.run(["nft", "list", "tables"]).stdout
        assert "inet wiremesh" in tables
        mesh.stop_agent(a)
        assert "wiremesh" not in a.host.run(["nft", "list", "tables"]).stdout
