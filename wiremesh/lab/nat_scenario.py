"""`wiremesh lab nat`: peers behind every kind of NAT on a simulated internet; who reaches
whom, directly or relayed, how fast, and what happens when a laptop changes networks.

Topology (203.0.113.0/24 is the internet; each NAT a namespace with nftables, LAN 198.19.N.0/24):

    pub            public address, no NAT
    pp1, pp2       each behind its own port-preserving masquerade (n1, n2)
    sym            behind a masquerade that picks a random port per mapping (n3)
    lan1, lan2     both behind one port-preserving NAT, on the same LAN (n4)
    udp            behind a network that lets only TCP out (n5)
    n6             an empty port-preserving NAT that pp1 roams to
    relay          a public host for a standalone relay

Every ordered pair pings over the overlay. A pair's connect time runs from the moment both
agents hold each other's WireGuard peer (their netmaps arrived, polled over UAPI) to the
first ping reply. A pair runs relayed when the source's WireGuard endpoint for the other is a
loopback address (the agent's local relay proxy), direct otherwise. `direct_expected` counts
the pairs a correct hole-punching design connects directly (`layout.direct_expected`). Then pp1
moves to n6 with its agent running; `roam_reconnect_ms` runs from the move until every pair
with pp1 that worked before answers again, both ways.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from wiremesh.lab.bulk import mbit_per_s
from wiremesh.lab.demo import pair_table
from wiremesh.lab.figures import percentile
from wiremesh.lab.layout import Layout, NatKind, direct_expected
from wiremesh.lab.mesh import LabAgent, MeshLab, wait_until
from wiremesh.lab.topology import mesh_lab

PP, RANDOM, UDP = NatKind.PORT_PRESERVING, NatKind.RANDOM_PORT, NatKind.UDP_BLOCKED
LAYOUT = Layout(
    peers={"pub": None, "pp1": "n1", "pp2": "n2", "sym": "n3", "lan1": "n4", "lan2": "n4",
           "udp": "n5"},
    nats={"n1": PP, "n2": PP, "n3": RANDOM, "n4": PP, "n5": UDP, "n6": PP},
    relays=("relay",),
    internet="203.0.113.0/24",
)
ROAMER, ROAM_TO = "pp1", "n6"
SHORT = {None: "public", PP: "pp-nat", RANDOM: "rand-nat", UDP: "no-udp"}  # table headings
FIGURES = ("peers", "pairs_total", "pairs_ok", "direct_pairs", "relayed_pairs",
           "direct_expected", "direct_expected_ok", "connect_ms_p50", "connect_ms_p99",
           "roam_reconnect_ms", "relay_mbit")

CONNECT_DEADLINE_S = 30.0  # per pair, from both netmaps holding each other
NETMAP_DEADLINE_S = 90.0
PING_INTERVAL_S = 0.1
BULK_PORT = 5201
BULK_SECONDS = 3.0
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from", re.M)

Pair = tuple[str, str]


@dataclass
class PairResult:
    src: str
    dst: str
    expected_direct: bool
    connect_ms: float | None = None  # None: no reply before the deadline
    path: str | None = None  # "direct" | "relayed" (from the source's WireGuard endpoint)
    endpoint: str | None = None


def path_of(endpoint: str | None) -> str | None:
    """How a peer is reached, from the WireGuard endpoint the source uses for it."""
    if endpoint is None:
        return None
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    return "relayed" if ipaddress.ip_address(host).is_loopback else "direct"


class Pinger:
    """`ping` from one host to one overlay address every PING_INTERVAL_S until the first
    reply or the deadline; restarted while the address is not routable yet."""

    def __init__(self, agent: LabAgent, dst_ip: str, deadline: float) -> None:
        self.agent, self.dst_ip, self.deadline = agent, dst_ip, deadline
        self.reply_at: float | None = None  # unix time of the first reply
        self.proc: subprocess.Popen | None = None
        self.done = False
        self._start()

    def _start(self) -> None:
        left = self.deadline - time.time()
        if left <= 0:
            self.done = True
            return
        self.proc = subprocess.Popen(
            self.agent.host.cmd(["ping", "-n", "-D", "-c", "1", "-i", str(PING_INTERVAL_S),
                                 "-w", str(max(1, round(left))), self.dst_ip]),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def poll(self) -> bool:
        """True once finished (replied or gave up)."""
        if self.done or self.proc is None or self.proc.poll() is None:
            return self.done
        out = self.proc.communicate()[0]
        m = _REPLY.search(out)
        if m:
            self.reply_at, self.done = float(m.group(1)), True
        else:
            self._start()  # an early error (no route yet) or the deadline: _start decides
        return self.done

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def ping_until(pingers: dict[Pair, Pinger], timeout: float) -> None:
    try:
        wait_until(lambda: all([p.poll() for p in pingers.values()]), timeout,
                   "the pings to finish")
    finally:
        for p in pingers.values():
            p.close()


class NatScenario:
    def __init__(self, mesh: MeshLab, console: Console, layout: Layout = LAYOUT) -> None:
        self.mesh, self.console, self.layout = mesh, console, layout
        self.names = list(layout.peers)
        self.expected = direct_expected(layout)
        self.keys: dict[str, str] = {}  # agent -> its WireGuard public key
        self.ips: dict[str, str] = {}  # agent -> overlay IP
        self.held: dict[Pair, float] = {}  # (a, b): when a first held b's peer (unix time)
        self.results: dict[Pair, PairResult] = {
            (a, b): PairResult(a, b, (a, b) in self.expected)
            for a in self.names for b in self.names if a != b}

    # --- all pairs -------------------------------------------------------------------------

    def _watch(self) -> None:
        """Note when each agent first holds each other agent's peer (UAPI, unix time)."""
        now = time.time()
        for name in self.names:
            a = self.mesh.agents[name]
            self.mesh.agent_alive(a)
            if name not in self.keys and (key := a.public_key) is not None:
                with contextlib.suppress(OSError):  # no state file: not enrolled yet
                    self.ips[name] = a.overlay_ip
                    self.keys[name] = key
            status = a.wg_status()
            if status is None:
                continue
            by_key = {k: n for n, k in self.keys.items()}
            for key in status.peers:
                other = by_key.get(key)
                if other is not None:
                    self.held.setdefault((name, other), now)

    def connect_all(self) -> None:
        """Start every agent; ping each ordered pair as soon as both hold each other."""
        self.mesh.start("nat")
        pingers: dict[Pair, Pinger] = {}
        both_at: dict[Pair, float] = {}

        def progress() -> bool:
            if len(self.held) < len(self.results):
                self._watch()
            for a, b in self.results:
                if (a, b) in pingers or (a, b) not in self.held or (b, a) not in self.held:
                    continue
                both_at[(a, b)] = max(self.held[(a, b)], self.held[(b, a)])
                pingers[(a, b)] = Pinger(self.mesh.agents[a], self.ips[b],
                                         both_at[(a, b)] + CONNECT_DEADLINE_S)
            return len(pingers) == len(self.results) and all([p.poll()
                                                              for p in pingers.values()])

        try:
            wait_until(progress, NETMAP_DEADLINE_S + CONNECT_DEADLINE_S,
                       "every agent to hold every other's peer and its pings to finish")
        finally:
            for p in pingers.values():
                p.close()
        for pair, p in pingers.items():
            if p.reply_at is not None:
                self.results[pair].connect_ms = round(
                    max(0.0, p.reply_at - both_at[pair]) * 1e3, 1)
        self._paths()

    def _paths(self) -> None:
        for name in self.names:
            status = self.mesh.agents[name].wg_status()
            peers = status.peers if status else {}
            for other in self.names:
                r = self.results.get((name, other))
                peer = peers.get(self.keys.get(other, ""))
                if r is not None and r.connect_ms is not None and peer is not None:
                    r.endpoint, r.path = peer.endpoint, path_of(peer.endpoint)

    # --- relay throughput ----------------------------------------------------------------------

    def relay_mbit(self) -> float | None:
        relayed = [r for r in self.results.values() if r.path == "relayed"]
        if not relayed:
            self.console.print("relay_mbit: null, no pair ran relayed (no relay path in use)")
            return None
        r = relayed[0]
        src, dst = self.mesh.agents[r.src], self.mesh.agents[r.dst]
        log = self.mesh.log(f"bulk-{r.dst}")
        recv = dst.host.popen([sys.executable, "-m", "wiremesh.lab.bulk", "recv",
                               "--port", str(BULK_PORT)], log=log)
        wait_until(lambda: "ready" in log.read_text(), 15, "the bulk receiver")
        src.host.run([sys.executable, "-m", "wiremesh.lab.bulk", "send", "--to",
                      f"{self.ips[r.dst]}:{BULK_PORT}", "--seconds", str(BULK_SECONDS)],
                     timeout=BULK_SECONDS + 30)
        recv.wait(30)
        figures = json.loads(log.read_text().strip().splitlines()[-1])
        mbit = mbit_per_s(figures)
        self.console.print(f"relay_mbit: {r.src} -> {r.dst} relayed, "
                           f"{figures['bytes']} bytes in {figures['seconds']:.2f} s")
        return None if mbit is None else round(mbit, 1)

    # --- roaming -------------------------------------------------------------------------------

    def roam(self) -> float | None:
        """Move ROAMER to ROAM_TO; ms until every pair with it that worked answers again."""
        pairs = [p for p, r in self.results.items()
                 if ROAMER in p and r.connect_ms is not None]
        if not pairs:
            self.console.print(f"roam: {ROAMER} reached nobody before moving; nothing to "
                               "reconnect")
            return None
        nat = self.mesh.topo.nats[ROAM_TO]
        t0 = time.time()
        self.mesh.topo.move(self.mesh.agents[ROAMER].host, nat)
        pingers = {(a, b): Pinger(self.mesh.agents[a], self.ips[b], t0 + CONNECT_DEADLINE_S)
                   for a, b in pairs}
        ping_until(pingers, CONNECT_DEADLINE_S + 10)
        self.mesh.agent_alive(self.mesh.agents[ROAMER])
        back = {p: pg.reply_at for p, pg in pingers.items()}
        lost = [f"{a}->{b}" for (a, b), t in back.items() if t is None]
        self.console.print(f"roam: {ROAMER} moved behind {ROAM_TO} ({nat.wan_ip}); "
                           + (f"never came back: {', '.join(lost)}" if lost else
                              f"all {len(pairs)} pairs with it answer again"))
        if lost:
            return None
        return round(max(t for t in back.values() if t is not None) * 1e3 - t0 * 1e3, 1)

    # --- figures -------------------------------------------------------------------------------

    def figures(self, roam_ms: float | None, relay_mbit: float | None) -> dict[str, Any]:
        ok = [r for r in self.results.values() if r.connect_ms is not None]
        times = [r.connect_ms for r in ok if r.connect_ms is not None]
        return {
            "peers": len(self.names),
            "pairs_total": len(self.results),
            "pairs_ok": len(ok),
            "direct_pairs": sum(r.path == "direct" for r in ok),
            "relayed_pairs": sum(r.path == "relayed" for r in ok),
            "direct_expected": len(self.expected),
            "direct_expected_ok": sum(r.expected_direct and r.path == "direct" for r in ok),
            "connect_ms_p50": percentile(times, 50) if times else None,
            "connect_ms_p99": percentile(times, 99) if times else None,
            "roam_reconnect_ms": roam_ms,
            "relay_mbit": relay_mbit,
        }

    def table(self) -> Any:
        def cell(src: str, dst: str) -> str:
            r = self.results[(src, dst)]
            mark = "*" if r.expected_direct else " "
            if r.connect_ms is None:
                return f"[red]✗[/]{mark}"
            colour = "green" if r.path == "direct" else "yellow"
            return f"[{colour}]{r.path or '?'}[/]{mark} {r.connect_ms:.0f}ms"

        headers = {n: f"{n}\n{SHORT[self.layout.kind(n)]}" for n in self.names}
        return pair_table("overlay pings: path and connect time (* = direct expected)",
                          headers, cell)


def summary_ok(figures: dict[str, Any]) -> bool:
    """Issue 10's acceptance bar for this scenario."""
    return (figures["pairs_ok"] == figures["pairs_total"]
            and figures["direct_expected_ok"] == figures["direct_expected"]
            and figures["connect_ms_p99"] is not None and figures["connect_ms_p99"] < 2000
            and figures["roam_reconnect_ms"] is not None
            and figures["roam_reconnect_ms"] < 3000)


def run_nat_scenario(console: Console, run_id: str | None = None
                     ) -> tuple[dict[str, Any], list[PairResult]]:
    """Run the scenario; returns the figures (FIGURES, in that order) and every pair."""
    with mesh_lab(LAYOUT, console, run_id) as mesh:
        console.print(f"lab [bold]{mesh.lab.id}[/]: {len(LAYOUT.peers)} agents on "
                      f"{LAYOUT.internet}: " + ", ".join(
                          f"{p}={LAYOUT.kind(p) or 'public'}" for p in LAYOUT.peers))
        s = NatScenario(mesh, console)
        s.connect_all()
        console.print(s.table())
        relay = s.relay_mbit()
        roam = s.roam()
        return s.figures(roam, relay), list(s.results.values())
