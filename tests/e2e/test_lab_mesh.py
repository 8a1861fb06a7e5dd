"""The walking skeleton end to end: real server, real agents, real wireguard-go tunnels."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from wiremesh.agent.relay_link import relay_urls
from wiremesh.lab.demo import run_demo
from wiremesh.lab.layout import Layout
from wiremesh.lab.mesh import wait_until, wiremesh_cmd
from wiremesh.lab.netns import Lab, new_run_id
from wiremesh.lab.topology import build_mesh

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
        mesh = build_mesh(lab, Layout.public(["m1", "m2"]))
        mesh.start("t")
        mesh.wait_agents_configured(mesh.agents.values(), 1)
        a = mesh.agents["m1"]
        m = a.metrics()
        assert m["wiremesh_agent_peers"] == 1 and m["wiremesh_agent_netmap_version"] > 0
        # The netmap advertised the server's embedded relay; the agent holds a verified
        # wss connection to it.
        relay = relay_urls(mesh.url, ["/api/v1/relay"])[0]
        wait_until(lambda: a.metrics().get(
            f'wiremesh_agent_relay_connected{{url="{relay}"}}') == 1, 20, "the relay link")
        tables = a.host.run(["nft", "list", "tables"]).stdout
        assert "inet wiremesh" in tables
        mesh.stop_agent(a)
        assert "wiremesh" not in a.host.run(["nft", "list", "tables"]).stdout


def test_agent_keeps_the_mesh_when_the_server_forgets_it_and_only_down_removes_it() -> None:
    with Lab() as lab:
        mesh = build_mesh(lab, Layout.public(["m1", "m2"]))
        mesh.start("t")
        mesh.wait_agents_configured(mesh.agents.values(), 1)
        m1, m2 = mesh.agents["m1"], mesh.agents["m2"]
        # A server started on an empty database (or an old backup) answers 401 to every
        # agent: they must keep their tunnels and say so, not tear themselves down.
        mesh.stop_server()
        Path(mesh.db_url.removeprefix("sqlite:///")).unlink()
        mesh.start_server()
        wait_until(lambda: m1.metrics().get("wiremesh_agent_credentials_refused") == 1, 60,
                   "m1 to report that the server refuses its token")
        assert mesh.agent_alive(m1) and mesh.agent_alive(m2)
        assert m1.host.ping(m2.overlay_ip, count=3)
        log = mesh.log("m1").read_text()
        refusals = [ln for ln in log.splitlines() if "refuses this peer's token" in ln]
        assert refusals and all(" ERROR " in ln for ln in refusals)
        assert "wiremesh down" in refusals[0]

        # Nor does a CA file gone missing keep a restarted agent from rebuilding its mesh.
        mesh.stop_agent(m2)
        state = json.loads((m2.state_dir / "state.json").read_text())
        state["config"]["ca_file"] = str(lab.log_dir / "gone.pem")
        (m2.state_dir / "state.json").write_text(json.dumps(state))
        mesh.start_agent(m2)
        mesh.wait_agents_configured([m2], 1)
        assert m2.host.ping(m1.overlay_ip, count=3)
        wait_until(lambda: "cannot verify the server: --ca-file" in mesh.log("m2").read_text(),
                   30, "m2 to say it cannot verify the server")

        # `wiremesh down` is the local, explicit way: the agent stops and cleans up.
        res = m1.host.run(wiremesh_cmd("down", "--state-dir", str(m1.state_dir)), check=False)
        assert res.returncode == 0, res.stderr
        assert "stopped the agent" in res.stdout
        assert m1.proc is not None and m1.proc.wait(10) == 0
        assert "wiremesh" not in m1.host.run(["nft", "list", "tables"]).stdout
        assert m1.ifname not in m1.host.run(["ip", "link"]).stdout
        assert (m1.state_dir / "state.json").exists()  # without --forget the state stays
        res = m1.host.run(wiremesh_cmd("down", "--state-dir", str(m1.state_dir), "--forget"),
                          check=False)
        assert res.returncode == 0, res.stderr
        assert "no agent runs from" in res.stdout and "must enrol again" in res.stdout
        assert not (m1.state_dir / "state.json").exists()
        assert not (m1.state_dir / "private.key").exists()
