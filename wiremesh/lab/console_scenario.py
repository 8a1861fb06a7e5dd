"""`wiremesh lab console`: the web console in a real browser against a real lab.

A server with its OpenID provider (node-oidc-provider, in the server's namespace, on the lab
CA's certificate), two agents enrolled with a setup key and a laptop enrolled with
`wiremesh up --login`. From a desk host, Debian's Chromium (Playwright) completes the laptop's
device login at the provider as its user, then an admin logs in to the console, walks every
page, edits the policy (the diff and the file's tests shown before apply), applies it, explains
the matrix cell it opened, finds the change in the audit log and logs out; an auditor and a
user then check what their roles see. The laptop's agent must then configure the peers the
new policy lets it reach: the edit made in the browser reached the data plane.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from wiremesh.lab.console_walk import Login, WalkPlan
from wiremesh.lab.layout import Layout
from wiremesh.lab.mesh import MeshLab, wait_until
from wiremesh.lab.netns import Host, LabError
from wiremesh.lab.provider import LabUser
from wiremesh.lab.sso import ADMINS, AUDITORS, start_login_agent, with_provider
from wiremesh.lab.topology import mesh_lab

SERVERS = ("srv1", "srv2")
LAPTOP = "laptop"
DESK = "desk"
ADMIN = LabUser("ada", "ada-lab-pass", (ADMINS,))
AUDITOR = LabUser("audrey", "audrey-lab-pass", (AUDITORS,))
USER = LabUser("alice", "alice-lab-pass", ("engineering",))

POLICY = """\
groups:
  servers: [srv1, srv2]
routes:
  - name: office
    prefix: 198.18.1.0/24
    routers: servers
    router_metrics: {srv1: 50}
policies:
  - name: servers-mesh
    sources: [servers]
    destinations: [servers]
    proto: all
"""
# What the admin types into the console's editor: engineers may ssh to the servers.
NEW_POLICY = "engineers-ssh"
POLICY_APPEND = f"""\
- name: {NEW_POLICY}
  sources: [idp.engineering]
  destinations: [servers]
  proto: tcp
  ports: [22]
"""
TESTS_APPEND = f"""\
tests:
- {{src: {LAPTOP}, dst: srv1, proto: tcp, port: 22, expect: allow}}
- {{src: {LAPTOP}, dst: srv1, proto: tcp, port: 80, expect: deny}}
"""
WALK_TIMEOUT_S = 240


def summary_ok(r: dict[str, Any]) -> bool:
    return bool(r["login_ok"] and r["device_login_ok"] and r["pages_checked"] >= 7
                and r["policy_applied_from_ui"] and r["console_errors"] == 0
                and bool(r["refusal_shown"]))


def run_console_scenario(console: Console, shots_dir: Path | None = None,
                         run_id: str | None = None) -> dict[str, Any]:
    layout = Layout.public([*SERVERS, LAPTOP])
    with mesh_lab(layout, console, run_id) as mesh:
        shots = (shots_dir or Path(f"wiremesh-console-{mesh.lab.id}")).resolve()
        shutil.rmtree(shots, ignore_errors=True)
        console.print(f"lab [bold]{mesh.lab.id}[/]: server + provider, "
                      f"{len(layout.peers)} agents, a browser; screenshots in {shots}")
        desk = mesh.topo.public_host(DESK)
        with with_provider(mesh, [ADMIN, AUDITOR, USER]):
            mesh.start_server()
            return _scenario(mesh, desk, shots, console)


def _scenario(mesh: MeshLab, desk: Host, shots: Path, console: Console) -> dict[str, Any]:
    servers = [mesh.agents[n] for n in SERVERS]
    key = mesh.admin("keys", "create", "servers", "--reusable", "--usage-limit", "2")["key"]
    for a in servers:
        mesh.start_agent(a, key)
    wait_until(lambda: all(mesh.agent_alive(a) and _enrolled(a.state_dir) for a in servers),
               60, "the servers' agents to enrol")
    policy = mesh.lab.log_dir / "policy.yaml"
    policy.write_text(POLICY)
    mesh.admin("policy", "apply", str(policy))
    mesh.wait_agents_configured(servers, 1)

    laptop = mesh.agents[LAPTOP]
    device_url = start_login_agent(mesh, laptop)
    console.print(f"laptop waits for its user at {device_url}")
    plan = WalkPlan(
        base_url=mesh.url, shots_dir=str(shots), trusted_certs=[str(mesh.tls.cert_file)],
        admin=_login(ADMIN), auditor=_login(AUDITOR), user=_login(USER),
        user_peers=[LAPTOP], device_url=device_url,
        policy_append=POLICY_APPEND, tests_append=TESTS_APPEND, new_policy=NEW_POLICY,
        explain=(LAPTOP, "srv1"), routers=list(SERVERS), used_group="servers")
    device = _walk(mesh, desk, plan, "device")
    device_ok = device["device_login_browser_ok"]
    if device_ok:
        wait_until(lambda: mesh.agent_alive(laptop) and _enrolled(laptop.state_dir), 60,
                   "the laptop to enrol after its device login")
    before = len(laptop.wg_peers())
    walk = _walk(mesh, desk, plan, "console")
    enforced = False
    if walk["policy_applied_from_ui"]:
        # The console's edit lets the laptop reach both servers: its netmap must say so.
        mesh.wait_agents_configured([laptop], len(SERVERS), timeout=30)
        enforced = before == 0
    errors = [*device["console_errors"], *walk["console_errors"]]
    for e in errors:
        console.print(f"[red]browser console:[/] {e}", highlight=False)
    failure = device["failure"] or walk["failure"]
    if failure:
        console.print(f"[red]walk failed:[/] {failure}", highlight=False)
    pngs = sorted(shots.rglob("*.png"))
    console.print(f"{len(pngs)} screenshots in {shots}")
    return {
        "pages_checked": len(walk["pages_checked"]),
        "login_ok": walk["login_ok"],
        "device_login_ok": bool(device_ok and _enrolled(laptop.state_dir)),
        "policy_applied_from_ui": walk["policy_applied_from_ui"],
        "matrix_cells": walk["matrix_cells"],
        "console_errors": len(errors),
        "screenshots": len(pngs),
        "screenshots_dir": str(shots),
        "pages": walk["pages_checked"],
        "policy_enforced": enforced,
        "auditor_read_only": walk["auditor_read_only"],
        "auditor_write_refused": walk["auditor_write_refused"],
        "user_sees_only_own_peers": walk["user_sees_only_own_peers"],
        "refusal_shown": walk["refusal_shown"],
        "failure": failure,
    }


def _login(u: LabUser) -> Login:
    return Login(u.name, u.password)


def _enrolled(state_dir: Path) -> bool:
    return (state_dir / "state.json").exists()


def _walk(mesh: MeshLab, desk: Host, plan: WalkPlan, steps: str) -> dict[str, Any]:
    """Run the browser walk's `steps` from the desk host; its result (a dict)."""
    plan_file = mesh.lab.log_dir / f"walk-{steps}.json"
    plan_file.write_text(plan.to_json())
    res = desk.run([sys.executable, "-m", "wiremesh.lab.console_walk", str(plan_file), steps],
                   check=False, timeout=WALK_TIMEOUT_S)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        raise LabError(f"the browser walk ({steps}) failed ({res.returncode}): "
                       f"{res.stderr.strip()[-800:]}")
    out: dict[str, Any] = json.loads(lines[-1])
    return out

