"""`wiremesh lab failover`: clients reach an internal network through three router peers while
the active router is taken down again and again; measures how long their traffic stops.

Topology: a server, routers r1..r3 (metrics 10/20/30, masquerading) on the underlay and on the
internal switch 198.18.1.0/24 with a UDP echo service, authorized clients c1/c2 and an outsider
c3 that policy keeps out of the internal network. Everything is configured the way an operator
would: a policy file applied with `wiremesh policy apply`.

Each trial breaks the router the clients use right now, in turn by
- `kill`: SIGKILL of every process in its namespace (agent and wireguard-go),
- `link`: its underlay link set down,
- `nft`: an nftables table dropping its WireGuard UDP port both ways,
then waits until both clients' echoes come back through another router, restores the router
(restart from saved state / link up / table deleted) and waits until every router answers the
clients' probes again. The second half of the trials runs with the server stopped.

The interruption of a trial is the longest gap between echo replies around the break (worst of
the two clients). c3 forces its way meanwhile: the prefix on its WireGuard peer for the active
router and a kernel route into its tunnel, sending echoes throughout; any answer it ever gets
counts in `unauthorized_reached`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from wiremesh.agent.dataplane import KEEPALIVE_S
from wiremesh.lab.echo import Reply, read_replies
from wiremesh.lab.figures import percentile
from wiremesh.lab.layout import Layout
from wiremesh.lab.mesh import LabAgent, MeshLab, stop, wait_until
from wiremesh.lab.netns import LabError, run
from wiremesh.lab.topology import mesh_lab
from wiremesh.wg.backend import WgPeerConfig
from wiremesh.wg.uapi import UapiClient, render_set

PREFIX = "198.18.1.0/24"
ECHO_PORT = 7777
ECHO_INTERVAL = 0.01
WG_PORT = 51820  # the agents' default listen port
ROUTER_METRICS = {"r1": 10, "r2": 20, "r3": 30}
CLIENTS = ("c1", "c2")
OUTSIDER = "c3"
METHODS = ("kill", "link", "nft")
# Traffic must have flowed through the new router this long before a trial counts as recovered.
SETTLE_S = 0.3
RESUME_TIMEOUT_S = 10.0
# A restored router counts as answering once this many bytes came from it on both clients:
# several probe answers (80 bytes each inside WireGuard), more than a handshake and keepalive.
ANSWERING_BYTES = 400
BLACKHOLE_TABLE = "wmlab_blackhole"

POLICY = f"""\
groups:
  routers: [{", ".join(ROUTER_METRICS)}]
  clients: [{", ".join(CLIENTS)}]
  outsiders: [{OUTSIDER}]
routes:
  - name: internal
    prefix: {PREFIX}
    routers: routers
    metric: 100
    router_metrics: {{{", ".join(f"{k}: {v}" for k, v in ROUTER_METRICS.items())}}}
    masquerade: true
policies:
  - name: mesh-ping
    sources: [all]
    destinations: [all]
    proto: icmp
  - name: clients-echo
    description: the clients use the echo service behind the routers
    sources: [clients]
    proto: udp
    ports: [{ECHO_PORT}]
    routes: [internal]
tests:
  - {{src: {OUTSIDER}, dst: r1, proto: udp, port: {ECHO_PORT}, expect: deny}}
"""

BLACKHOLE = f"""\
table inet {BLACKHOLE_TABLE} {{
\tchain in {{
\t\ttype filter hook input priority raw; policy accept;
\t\tudp dport {WG_PORT} drop
\t}}
\tchain out {{
\t\ttype filter hook output priority raw; policy accept;
\t\tudp sport {WG_PORT} drop
\t}}
}}
"""


@dataclass
class Trial:
    n: int
    method: str
    server_up: bool
    from_router: str
    to_router: str | None = None  # None: the clients' traffic never came back
    interruption_ms: dict[str, float | None] = field(default_factory=dict)  # per client

    @property
    def worst_ms(self) -> float | None:
        values = list(self.interruption_ms.values())
        return None if not values or None in values else max(values)  # type: ignore[type-var]


@dataclass
class EchoLog:
    """Follows one `python -m wiremesh.lab.echo send` reply file."""

    path: Path
    offset: int = 0
    replies: list[Reply] = field(default_factory=list)

    def poll(self) -> list[Reply]:
        new, self.offset = read_replies(self.path, self.offset)
        self.replies += new
        return self.replies

    def since(self, t: float) -> list[Reply]:
        return [r for r in self.poll() if r.recv >= t]


def longest_gap_ms(replies: list[Reply], start: float, end: float) -> float:
    """The longest silence between replies received in [start, end], in ms."""
    times = sorted(r.recv for r in replies if start <= r.recv <= end)
    gaps = [b - a for a, b in pairwise(times)]
    return round(max(gaps, default=end - start) * 1000, 1)


class FailoverScenario:
    def __init__(self, mesh: MeshLab, console: Console) -> None:
        self.mesh = mesh
        self.lab = mesh.lab
        self.console = console
        self.internal = self.lab.add_switch("i", PREFIX)
        self.resource = self.lab.add_host("res")
        self.resource_ip = self.lab.connect(self.resource, self.internal).split("/")[0]
        # Masquerading routers: the echo service sees (and names) the router's internal address.
        self.router_by_ip = {
            self.lab.connect(mesh.agents[r].host, self.internal).split("/")[0]: r
            for r in ROUTER_METRICS
        }
        self.keys: dict[str, str] = {}  # name -> public key
        self.overlay: dict[str, str] = {}  # name -> overlay IP
        self.echo: dict[str, EchoLog] = {}
        self.senders: list = []
        self.blackhole_file = self.lab.log_dir / "blackhole.nft"
        self.blackhole_file.write_text(BLACKHOLE)

    def agent(self, name: str) -> LabAgent:
        return self.mesh.agents[name]

    # --- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        mesh = self.mesh
        names = list(mesh.agents)
        mesh.start("failover")
        wait_until(lambda: len(mesh.admin("peers", "list")) == len(names), 60,
                   "every agent to enrol")
        for p in mesh.admin("peers", "list"):
            self.keys[p["name"]], self.overlay[p["name"]] = p["public_key"], p["overlay_ip"]
        policy = self.lab.log_dir / "policy.yaml"
        policy.write_text(POLICY)
        mesh.admin("policy", "apply", str(policy))
        mesh.wait_agents_configured(mesh.agents.values(), len(names) - 1)
        wait_until(lambda: all(self.active_router(c) for c in CLIENTS), 30,
                   f"the clients to route {PREFIX}")
        self.resource.popen([sys.executable, "-m", "wiremesh.lab.echo", "serve",
                             "--port", str(ECHO_PORT)], log=mesh.log("echo-server"))
        for c in (*CLIENTS, OUTSIDER):
            self.echo[c] = EchoLog(self.lab.log_dir / f"echo-{c}.jsonl")
            self.senders.append(self.agent(c).host.popen(
                [sys.executable, "-m", "wiremesh.lab.echo", "send",
                 "--to", f"{self.resource_ip}:{ECHO_PORT}", "--out", str(self.echo[c].path),
                 "--interval", str(ECHO_INTERVAL)],
                log=mesh.log(f"echo-{c}")))

    # --- observing the clients -------------------------------------------------------------------

    def active_router(self, client: str) -> str | None:
        """The router whose WireGuard peer holds the prefix on `client` right now."""
        by_key = {v: k for k, v in self.keys.items()}
        for key, peer in self.agent(client).wg_peers().items():
            if PREFIX in peer.allowed_ips:
                return by_key.get(key)
        return None

    def router_rx(self, client: str) -> dict[str, int]:
        peers = self.agent(client).wg_peers()
        return {r: peers[self.keys[r]].rx_bytes for r in ROUTER_METRICS
                if self.keys[r] in peers}

    def _flowing_via(self, client: str, router: str) -> bool:
        replies = self.echo[client].poll()
        return (bool(replies) and time.monotonic() - replies[-1].recv < 0.1
                and self.router_by_ip.get(replies[-1].via) == router)

    def wait_steady(self, timeout: float = 60) -> str:
        """Wait until both clients use the same router, their echoes flow through it and every
        router answers them; returns that router."""
        base = {c: self.router_rx(c) for c in CLIENTS}

        def steady() -> bool:
            actives = {self.active_router(c) for c in CLIENTS}
            active = actives.pop() if len(actives) == 1 else None
            if active is None:
                return False
            rx = {c: self.router_rx(c) for c in CLIENTS}
            answering = all(rx[c].get(r, 0) - base[c].get(r, 0) >= ANSWERING_BYTES
                            for c in CLIENTS for r in ROUTER_METRICS)
            return answering and all(self._flowing_via(c, active) for c in CLIENTS)

        wait_until(steady, timeout, "the clients to settle on one router answering them all")
        active = self.active_router(CLIENTS[0])
        assert active is not None
        return active

    # --- the outsider ---------------------------------------------------------------------------

    def force_outsider(self, router: str) -> None:
        """Put the prefix on c3's peer for `router` and route it into the tunnel: all the
        outsider can do on its own machine. Only the router's forward chain stands in its way."""
        c3 = self.agent(OUTSIDER)
        c3.host.run(["ip", "route", "replace", PREFIX, "dev", c3.ifname])
        peer = WgPeerConfig(self.keys[router], (f"{self.overlay[router]}/32", PREFIX),
                            persistent_keepalive=KEEPALIVE_S)
        UapiClient(c3.ifname).set(render_set([peer], []))

    # --- breaking and restoring routers -----------------------------------------------------------

    def underlay_link(self, router: str) -> str:
        return self.lab.link_of(self.agent(router).host, self.mesh.topo.internet)

    def break_router(self, router: str, method: str) -> None:
        a = self.agent(router)
        if method == "kill":
            kill_all(a.host.ns)
            if a.proc is not None:
                a.proc.wait()
                a.proc = None
        elif method == "link":
            a.host.run(["ip", "link", "set", self.underlay_link(router), "down"])
        else:
            a.host.run(["nft", "-f", str(self.blackhole_file)])

    def restore_router(self, router: str, method: str) -> None:
        a = self.agent(router)
        if method == "kill":
            self.mesh.start_agent(a)  # from its saved state: works with the server down
        elif method == "link":
            a.host.run(["ip", "link", "set", self.underlay_link(router), "up"])
        else:
            a.host.run(["nft", "delete", "table", "inet", BLACKHOLE_TABLE])

    # --- one trial --------------------------------------------------------------------------------

    def trial(self, n: int, method: str, server_up: bool) -> Trial:
        victim = self.wait_steady()
        self.force_outsider(victim)
        t = Trial(n, method, server_up, victim)
        t_break = time.monotonic()
        self.break_router(victim, method)
        try:
            resumed = self._wait_resumed(victim, t_break)
            t_end = time.monotonic()
            if resumed:
                last = self.echo[CLIENTS[0]].poll()[-1]
                t.to_router = self.router_by_ip.get(last.via, last.via)
            for c in CLIENTS:
                t.interruption_ms[c] = (
                    longest_gap_ms(self.echo[c].poll(), t_break - 1.0, t_end) if resumed else None)
        finally:
            self.restore_router(victim, method)
        return t

    def _wait_resumed(self, victim: str, t_break: float) -> bool:
        """True once every client's echoes have come back through another router for
        SETTLE_S; False if that does not happen within RESUME_TIMEOUT_S."""

        def resumed(c: str) -> bool:
            after = self.echo[c].since(t_break)
            moved = [r for r in after if self.router_by_ip.get(r.via) != victim]
            return (bool(moved) and self.router_by_ip.get(after[-1].via) != victim
                    and after[-1].recv - moved[0].recv >= SETTLE_S)

        try:
            wait_until(lambda: all(resumed(c) for c in CLIENTS), RESUME_TIMEOUT_S,
                       "traffic to resume")
        except LabError:
            return False
        return True

    # --- all of it --------------------------------------------------------------------------------

    def run(self, trials: int, on_trial: Callable[[Trial], None]) -> list[Trial]:
        self.setup()
        up_trials = trials // 2
        done = []
        for n in range(1, trials + 1):
            if n == up_trials + 1:
                self.console.print("stopping the server; the agents keep their saved netmaps")
                self.mesh.stop_server()
            t = self.trial(n, METHODS[(n - 1) % len(METHODS)], server_up=n <= up_trials)
            on_trial(t)
            done.append(t)
        self.wait_steady()  # the last router restored too
        return done

    def outsider_figures(self) -> dict[str, int]:
        """What the outsider sent while forcing, the answers it got, and the packets the
        routers' forward chains dropped (only the outsider is refused there; counters restart
        whenever a router reloads its ruleset, so this is a lower bound)."""
        for p in self.senders:
            stop(p)
        sent = 0
        with contextlib.suppress(OSError, ValueError, IndexError, KeyError):
            lines = self.mesh.log(f"echo-{OUTSIDER}").read_text().splitlines()
            sent = int(json.loads(lines[-1])["sent"])
        return {"unauthorized_sent": sent,
                "unauthorized_dropped_at_routers": sum(map(self.forward_drops, ROUTER_METRICS)),
                "unauthorized_reached": len(self.echo[OUTSIDER].poll())}

    def forward_drops(self, router: str) -> int:
        res = self.agent(router).host.run(
            ["nft", "-j", "list", "chain", "inet", "wiremesh", "mesh_forward"], check=False)
        if res.returncode != 0:
            return 0
        return sum(e["counter"]["packets"] for item in json.loads(res.stdout)["nftables"]
                   for e in item.get("rule", {}).get("expr", []) if "counter" in e)


def kill_all(ns: str) -> None:
    """SIGKILL every process in namespace `ns` at once: a router dying without a goodbye."""
    pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def trial_row(t: Trial) -> list[str]:
    worst = t.worst_ms
    return [str(t.n), t.method, "up" if t.server_up else "[yellow]down[/]",
            f"{t.from_router} -> {t.to_router or '[red]none[/]'}",
            *(f"{v:.0f}" if v is not None else "[red]-[/]" for v in t.interruption_ms.values()),
            "[red]no recovery[/]" if worst is None else f"{worst:.0f}"]


def trials_table(trials: list[Trial]) -> Table:
    table = Table(title=f"failover trials ({PREFIX}, echo every {ECHO_INTERVAL * 1000:.0f} ms)")
    for col in ("#", "method", "server", "router", *(f"{c} ms" for c in CLIENTS),
                "interruption ms"):
        table.add_column(col, justify="right" if col.endswith("ms") or col == "#" else "left")
    for t in trials:
        table.add_row(*trial_row(t))
    return table


def summarize(trials: list[Trial], outsider: dict[str, int]) -> dict[str, Any]:
    worst = [t.worst_ms for t in trials]
    measured = [w for w in worst if w is not None]
    figures: dict[str, Any] = {
        "trials": len(trials),
        "server_down_trials": sum(not t.server_up for t in trials),
        "trials_without_recovery": len(worst) - len(measured),
    }
    for name, q in (("p50", 50), ("p99", 99), ("max", 100)):
        # A trial that never recovered is an infinite interruption.
        figures[f"interruption_ms_{name}"] = (
            percentile(measured, q) if len(measured) == len(worst) and measured else None)
    figures["by_method_max_ms"] = {
        m: max((w for t in trials if t.method == m and (w := t.worst_ms) is not None),
               default=None) for m in METHODS}
    return {**figures, **outsider}


def run_failover(trials: int, console: Console, run_id: str | None = None
                 ) -> tuple[dict[str, Any], list[Trial]]:
    """Run the scenario; returns the figures (see `summarize`) and every trial."""
    if trials < 1:
        raise LabError("trials: must be >= 1")
    layout = Layout.public([*ROUTER_METRICS, *CLIENTS, OUTSIDER])
    with mesh_lab(layout, console, run_id) as mesh:
        console.print(f"lab [bold]{mesh.lab.id}[/]: server, routers {', '.join(ROUTER_METRICS)} "
                      f"-> {PREFIX}, clients {', '.join(CLIENTS)}, outsider {OUTSIDER}")
        scenario = FailoverScenario(mesh, console)
        done = scenario.run(trials, lambda t: console.print(
            "trial", *trial_row(t)[:4], f"{t.worst_ms} ms", highlight=False))
        outsider = scenario.outsider_figures()
    console.print(trials_table(done))
    return summarize(done, outsider), done
