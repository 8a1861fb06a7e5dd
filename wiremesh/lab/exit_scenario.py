"""Exit nodes and names in a lab: the exit-node and DNS sections of `wiremesh lab dataplane`,
and the base of their end-to-end tests.

Topology: the server and agents c1 (a client that opts in with `--exit-node auto`), e1 and e2
(exit nodes, metrics 10/20, masquerading) on the lab's internet; e1 and e2 also sit on an
"outside" network 203.0.113.0/24 with a host `web` running a UDP echo. c1 has no route of its
own to 203.0.113.0/24, so its echoes reach `web` only through an exit node, and each answer
names the exit that carried it (its outside address, after masquerade).

- exit section: c1's echoes flow through e1; c1's routing keeps the server and its peers'
  endpoints outside the tunnel; e1 is killed (SIGKILL of its agent and wireguard-go) and the
  interruption is the longest gap between c1's echo answers until they come through e2.
- DNS section: c1 asks its resolver for every peer's name and for a name policy hides, and
  the answers' latency is measured.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from wiremesh.lab.echo import Reply
from wiremesh.lab.failover_scenario import EchoLog, kill_all, longest_gap_ms
from wiremesh.lab.figures import percentile
from wiremesh.lab.layout import Layout
from wiremesh.lab.mesh import LabAgent, MeshLab, wait_until
from wiremesh.lab.netns import Host
from wiremesh.lab.topology import mesh_lab

CLIENT, EXITS, HIDDEN = "c1", ("e1", "e2"), "h1"
LAYOUT = Layout.public([CLIENT, *EXITS, HIDDEN])
OUTSIDE = "203.0.113.0/24"
ECHO_PORT = 7777
ECHO_INTERVAL = 0.01
DNS_QUERIES = 200

POLICY = f"""\
groups:
  exits: [{", ".join(EXITS)}]
  users: [{CLIENT}]
  mesh: [{CLIENT}, {", ".join(EXITS)}]
routes:
  - name: internet
    prefix: 0.0.0.0/0
    routers: exits
    router_metrics: {{{EXITS[0]}: 10, {EXITS[1]}: 20}}
    masquerade: true
policies:
  - name: mesh-ping
    sources: [mesh]
    destinations: [mesh]
    proto: icmp
  - name: users-browse
    description: users leave for the internet through the exit nodes
    sources: [users]
    routes: [internet]
"""


@dataclass
class ExitLab:
    mesh: MeshLab
    web: Host
    web_ip: str
    exit_by_ip: dict[str, str]  # outside address -> exit node
    echo: EchoLog | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def client(self) -> LabAgent:
        return self.mesh.agents[CLIENT]

    def via(self, replies: list[Reply]) -> str | None:
        return self.exit_by_ip.get(replies[-1].via) if replies else None

    def flowing_via(self, exit_node: str, since: float | None = None) -> bool:
        assert self.echo is not None
        replies = self.echo.poll()
        return (bool(replies) and time.monotonic() - replies[-1].recv < 0.2
                and self.via(replies) == exit_node
                and (since is None or replies[-1].recv > since))

    def route_dev(self, dst: str) -> str | None:
        """The interface c1's kernel sends a packet to `dst` out of (None: no route)."""
        res = self.client.host.run(["ip", "-j", "route", "get", dst], check=False)
        if res.returncode != 0:
            return None
        dev: str | None = json.loads(res.stdout)[0].get("dev")
        return dev


def build(mesh: MeshLab) -> ExitLab:
    lab = mesh.lab
    outside = lab.add_switch("o", OUTSIDE)
    exit_by_ip = {lab.connect(mesh.agents[e].host, outside).split("/")[0]: e for e in EXITS}
    web = lab.add_host("web")
    web_ip = lab.connect(web, outside).split("/")[0]
    return ExitLab(mesh, web, web_ip, exit_by_ip)


def start(x: ExitLab, client_options: tuple[str, ...] = ("--exit-node", "auto")) -> None:
    mesh = x.mesh
    mesh.start_server()
    key = mesh.create_setup_key("exit")
    for name, a in mesh.agents.items():
        mesh.start_agent(a, key, client_options if name == CLIENT else ())
    wait_until(lambda: len(mesh.admin("peers", "list")) == len(mesh.agents), 60,
               "every agent to enrol")
    policy = mesh.lab.log_dir / "exit-policy.yaml"
    policy.write_text(POLICY)
    mesh.admin("policy", "apply", str(policy))
    mesh.wait_agents_configured([x.client], len(EXITS))
    x.web.popen([sys.executable, "-m", "wiremesh.lab.echo", "serve", "--port", str(ECHO_PORT)],
                log=mesh.log("web-echo"))
    x.echo = EchoLog(mesh.lab.log_dir / "echo-c1.jsonl")
    x.client.host.popen([sys.executable, "-m", "wiremesh.lab.echo", "send",
                         "--to", f"{x.web_ip}:{ECHO_PORT}", "--out", str(x.echo.path),
                         "--interval", str(ECHO_INTERVAL)], log=mesh.log("c1-echo"))


def outside_the_tunnel(x: ExitLab) -> dict[str, bool]:
    """Per address c1 must reach directly (the server, its peers' underlay addresses):
    whether its kernel routes it outside the WireGuard interface."""
    mesh = x.mesh
    musts = {"server": mesh.server.ip, **{n: mesh.agents[n].host.ip for n in EXITS}}
    return {name: x.route_dev(ip) not in (None, x.client.ifname) for name, ip in musts.items()}


def exit_section(x: ExitLab, timeout: float = 60) -> dict[str, Any]:
    """Traffic through e1, then e1 killed: how long until it flows through e2."""
    wait_until(lambda: x.flowing_via(EXITS[0]), timeout,
               f"c1's traffic to flow through {EXITS[0]}")
    bypass = outside_the_tunnel(x)
    into_tunnel = x.route_dev(x.web_ip) == x.client.ifname
    t_break = time.monotonic()
    kill_all(x.mesh.agents[EXITS[0]].host.ns)
    try:
        wait_until(lambda: x.flowing_via(EXITS[1], since=t_break), 15,
                   f"c1's traffic to come back through {EXITS[1]}")
        failed_over = True
    except Exception:
        failed_over = False
    assert x.echo is not None
    gap = longest_gap_ms(x.echo.poll(), t_break - 0.5, time.monotonic())
    ok = failed_over and into_tunnel and all(bypass.values())
    return {"exit_node_ok": ok, "exit_failover_ms": gap if failed_over else None,
            "exit_outside_tunnel": bypass, "exit_web_into_tunnel": into_tunnel}


def dns_section(x: ExitLab, queries: int = DNS_QUERIES) -> dict[str, Any]:
    """c1's resolver: every peer c1 may see resolves to its overlay address, the peer policy
    hides from it (h1) does not exist; p99 latency of the answers, asked from c1's host."""
    mesh = x.mesh
    expect: dict[str, str | None] = {f"{n}.mesh.internal": mesh.agents[n].overlay_ip
                                     for n in (CLIENT, *EXITS)}
    expect[f"{HIDDEN}.mesh.internal"] = None
    server = x.client.overlay_ip
    code = (
        "import json,sys,time,dns.message,dns.query,dns.rcode\n"
        "names=json.loads(sys.argv[1]);n=int(sys.argv[2]);out={};times=[]\n"
        "for i in range(n):\n"
        "  name=list(names)[i%len(names)];q=dns.message.make_query(name,'A')\n"
        "  t=time.perf_counter();r=dns.query.udp(q,sys.argv[3],timeout=2)\n"
        "  times.append((time.perf_counter()-t)*1000)\n"
        "  ans=[rd.to_text() for rr in r.answer for rd in rr]\n"
        "  out[name]=ans[0] if ans and r.rcode()==dns.rcode.NOERROR else None\n"
        "print(json.dumps({'answers':out,'ms':times}))\n")
    res = x.client.host.run([sys.executable, "-c", code, json.dumps(expect), str(queries),
                             server], check=False, timeout=120)
    if res.returncode != 0:
        return {"dns_ok": False, "dns_ms_p99": None, "dns_error": res.stderr.strip()[-300:]}
    got = json.loads(res.stdout)
    return {"dns_ok": got["answers"] == expect,
            "dns_ms_p99": round(percentile(got["ms"], 99), 2),
            "dns_answers": got["answers"]}


def run_exit_and_names(console: Console, run_id: str | None = None) -> dict[str, Any]:
    """Both sections in a lab of their own (the throughput lab stays as lean as it is)."""
    with mesh_lab(LAYOUT, console, run_id) as mesh:
        console.print(f"lab [bold]{mesh.lab.id}[/]: server, client {CLIENT} "
                      f"(--exit-node auto), exit nodes {', '.join(EXITS)} in front of "
                      f"{OUTSIDE}, {HIDDEN} (hidden from {CLIENT} by policy)")
        x = build(mesh)
        start(x)
        out = dns_section(x)
        console.print(f"names: {len(out.get('dns_answers') or {})} names as policy says: "
                      f"{out['dns_ok']}, p99 {out['dns_ms_p99']} ms over {DNS_QUERIES} queries")
        out.update(exit_section(x))
        console.print(f"exit node: traffic through {EXITS[0]}, server and peers outside the "
                      f"tunnel: {out['exit_node_ok']}; {EXITS[0]} killed, back through "
                      f"{EXITS[1]} after {out['exit_failover_ms']} ms")
    return out
