"""`wiremesh lab demo --scenario policy`: the reachability matrix checked with real traffic.

Six peers in three groups (web, app, db) get `examples/lab-policy.yaml` (tcp, udp, icmp, port
ranges, a one-way rule, a proto-all rule). Every host runs tcp and udp listeners; one prober
per source host tries every (proto, port) of the probe set against every other peer over the
overlay, and each outcome is held against `wiremesh policy matrix --json`: a probe that gets
through where the matrix denies it, or is blocked where it allows it, is a violation. Then
`examples/lab-policy-change.yaml` is applied live; the probes whose expectation changes are
polled from before the apply until all of them match, and everything is probed again.
`propagation_ms` counts from the server committing the apply (its audit entry): the CLI is a
slow-starting process that often returns after every agent has already enforced the change,
so `propagation_after_cli_ms` (from the CLI returning) is mostly 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from wiremesh.lab.layout import Layout
from wiremesh.lab.mesh import MeshLab, wait_until
from wiremesh.lab.netns import LabError
from wiremesh.lab.topology import mesh_lab

GROUPS = {"web": ("web1", "web2"), "app": ("app1", "app2"), "db": ("db1", "db2")}
PEERS = tuple(n for members in GROUPS.values() for n in members)
TCP_PORTS = (22, 5432, 8080, 9005, 9011)  # 9005 inside 9000-9010, 9011 just outside
UDP_PORTS = (5355, 5360, 7000)  # 5355 inside 5350-5359, 5360 outside until the change
PROBE_SET: tuple[tuple[str, int | None], ...] = (
    *(("tcp", p) for p in TCP_PORTS), *(("udp", p) for p in UDP_PORTS), ("icmp", None))
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
POLICY = EXAMPLES / "lab-policy.yaml"
POLICY_CHANGE = EXAMPLES / "lab-policy-change.yaml"

ROUND_TIMEOUT_S = 1.5  # a blocked probe waits this long; lab round trips are ~1 ms
POLL_TIMEOUT_S = 0.25  # per polled probe while waiting for a policy to take effect
CONVERGE_DEADLINE_S = 30.0

# (source, destination, proto, port) by peer name
Key = tuple[str, str, str, int | None]


# --- expectations (pure) ---------------------------------------------------------------------


def _in_ports(port: int | None, ranges: Iterable[str]) -> bool:
    ranges = list(ranges)
    if not ranges:
        return True
    for r in ranges:
        lo, _, hi = r.partition("-")
        if port is not None and int(lo) <= port <= int(hi or lo):
            return True
    return False


def allows(matrix: Mapping[str, Any], src: str, dst: str, proto: str, port: int | None) -> bool:
    """Whether `wiremesh policy matrix --json` output grants src -> dst proto/port."""
    for pair in matrix["pairs"]:
        if pair["src"] == src and pair["dst"] == dst:
            return any(a["proto"] == "all" or (a["proto"] == proto and _in_ports(port, a["ports"]))
                       for a in pair["allow"])
    return False


def expectations(matrix: Mapping[str, Any], peers: Iterable[str]) -> dict[Key, bool]:
    peers = list(peers)
    return {(s, d, proto, port): allows(matrix, s, d, proto, port)
            for s in peers for d in peers if s != d for proto, port in PROBE_SET}


@dataclass
class Tally:
    """Probe outcomes per protocol against the matrix."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    violations: list[dict[str, Any]] = field(default_factory=list)

    def add(self, key: Key, expected: bool, result: Mapping[str, Any]) -> None:
        c = self.counts.setdefault(key[2], {"probes": 0, "allowed_ok": 0, "denied_blocked": 0,
                                            "violations": 0})
        c["probes"] += 1
        if result["reached"] != expected:
            c["violations"] += 1
            self.violations.append({"src": key[0], "dst": key[1], "proto": key[2],
                                    "port": key[3], "expected": "allow" if expected else "deny",
                                    "got": result["detail"]})
        else:
            c["allowed_ok" if expected else "denied_blocked"] += 1

    def total(self, what: str) -> int:
        return sum(c[what] for c in self.counts.values())

    def summary(self) -> dict[str, int]:
        return {k: self.total(k) for k in ("probes", "violations", "allowed_ok",
                                           "denied_blocked")}


# --- processes in the lab --------------------------------------------------------------------


def start_listeners(mesh: MeshLab) -> None:
    for a in mesh.agents.values():
        a.host.popen([sys.executable, "-m", "wiremesh.lab.listeners",
                      "--tcp", ",".join(map(str, TCP_PORTS)),
                      "--udp", ",".join(map(str, UDP_PORTS))],
                     log=mesh.log(f"listeners-{a.name}"))

    def ready() -> bool:
        for a in mesh.agents.values():
            log = mesh.log(f"listeners-{a.name}")
            if "ready" not in (log.read_text() if log.exists() else ""):
                return False
        return True

    wait_until(ready, 15, "the listeners to bind their ports")


class Probers:
    """One `python -m wiremesh.lab.probes` per source host, all running at once."""

    def __init__(self, mesh: MeshLab, ips: Mapping[str, str], expected: Mapping[Key, bool],
                 timeout: float, until: float | None = None) -> None:
        self.mesh = mesh
        self.keys: dict[str, list[Key]] = {}
        for key in expected:
            self.keys.setdefault(key[0], []).append(key)
        self.procs: dict[str, subprocess.Popen] = {}
        for src, keys in self.keys.items():
            spec = mesh.lab.log_dir / f"probes-{src}.json"
            spec.write_text(json.dumps({"timeout": timeout, "until": until, "probes": [
                {"dst": ips[k[1]], "proto": k[2], "port": k[3], "expect": expected[k]}
                for k in keys]}))
            with open(spec) as stdin, open(mesh.log(f"probes-{src}"), "ab") as err:
                self.procs[src] = subprocess.Popen(
                    mesh.agents[src].host.cmd([sys.executable, "-m", "wiremesh.lab.probes"]),
                    stdin=stdin, stdout=subprocess.PIPE, stderr=err, text=True)

    def wait_started(self) -> None:
        """Block until every prober is probing (its first line)."""
        for src, p in self.procs.items():
            assert p.stdout is not None
            if not p.stdout.readline():
                raise LabError(f"prober on {src} failed ({p.wait()}): "
                               f"{self.mesh.tail(f'probes-{src}', 3)}")

    def results(self) -> dict[Key, dict[str, Any]]:
        out: dict[Key, dict[str, Any]] = {}
        for src, p in self.procs.items():
            assert p.stdout is not None
            lines = p.stdout.read().strip().splitlines()
            if p.wait() != 0 or not lines:
                raise LabError(f"prober on {src} failed ({p.returncode}): "
                               f"{self.mesh.tail(f'probes-{src}', 3)}")
            out.update(zip(self.keys[src], json.loads(lines[-1]), strict=True))
        return out

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def probe(mesh: MeshLab, ips: Mapping[str, str], expected: Mapping[Key, bool],
          timeout: float, until: float | None = None) -> dict[Key, dict[str, Any]]:
    probers = Probers(mesh, ips, expected, timeout, until)
    try:
        return probers.results()
    finally:
        probers.close()


def probe_round(mesh: MeshLab, ips: Mapping[str, str], expected: Mapping[Key, bool]) -> Tally:
    tally = Tally()
    for key, result in probe(mesh, ips, expected, ROUND_TIMEOUT_S).items():
        tally.add(key, expected[key], result)
    return tally


def settled_at(results: Mapping[Key, Mapping[str, Any]]) -> float | None:
    """When the last polled probe settled (monotonic), None if any never did."""
    times = [r["converged_at"] for r in results.values()]
    return None if not times or None in times else max(times)


# --- the scenario ----------------------------------------------------------------------------


def run_policy_scenario(console: Console, run_id: str | None = None) -> dict[str, Any]:
    for f in (POLICY, POLICY_CHANGE):
        if not f.exists():
            raise LabError(f"policy file {f} is missing (the scenario runs from a source tree)")
    with mesh_lab(Layout.public(PEERS), console, run_id) as mesh:
        console.print(f"lab [bold]{mesh.lab.id}[/]: 1 server + {len(PEERS)} agents in groups "
                      + ", ".join(f"{g}={'/'.join(m)}" for g, m in GROUPS.items()))
        return _scenario(mesh, console)


def _scenario(mesh: MeshLab, console: Console) -> dict[str, Any]:
    n = len(mesh.agents)
    t_start = time.monotonic()
    start_listeners(mesh)
    mesh.start("policy-lab")
    mesh.wait_agents_configured(mesh.agents.values(), n - 1)
    ips = {p["name"]: p["overlay_ip"] for p in mesh.admin("peers", "list")}
    console.print(f"mesh up in {time.monotonic() - t_start:.1f}s")

    # The live change is timed from the apply, so its matrix is learnt beforehand.
    mesh.admin("policy", "apply", str(POLICY_CHANGE))
    after = expectations(mesh.admin("policy", "matrix"), PEERS)
    mesh.admin("policy", "apply", str(POLICY))
    before = expectations(mesh.admin("policy", "matrix"), PEERS)
    changed = {k: v for k, v in after.items() if before[k] != v}
    if not changed:
        raise LabError(f"{POLICY_CHANGE.name} changes nothing the probes can see")

    t0 = time.monotonic()
    converged = settled_at(probe(mesh, ips, before, POLL_TIMEOUT_S, CONVERGE_DEADLINE_S))
    if converged is None:
        raise LabError(f"{POLICY.name} did not take effect within {CONVERGE_DEADLINE_S:.0f}s")
    console.print(f"{POLICY.name} in effect everywhere ({len(before)} probes agree)")
    t_round = time.monotonic()
    first = probe_round(mesh, ips, before)
    round_s = time.monotonic() - t_round
    console.print(summary_table(f"round 1: {POLICY.name}", first))

    console.print(f"applying {POLICY_CHANGE.name} live ({len(changed)} probes change) ...")
    change = live_change(mesh, ips, changed)
    if expectations(mesh.admin("policy", "matrix"), PEERS) != after:
        raise LabError("the matrix after the live change differs from the one learnt before")
    console.print(f"new matrix enforced by every agent {change['propagation_ms']} ms after the "
                  f"server committed the apply ({change['propagation_after_cli_ms']} ms after "
                  f"the CLI returned; the CLI took {change['apply_cli_ms']} ms)")
    second = probe_round(mesh, ips, after)
    console.print(summary_table(f"round 2: {POLICY_CHANGE.name} (live)", second))

    for v in first.violations + second.violations:
        console.print(f"[red]violation[/] {v}", highlight=False)
    totals = {k: first.total(k) + second.total(k)
              for k in ("probes", "violations", "allowed_ok", "denied_blocked")}
    return {**totals, **change, "peers": n, "changed_probes": len(changed),
            "round1": first.summary(), "round2": second.summary(),
            "initial_converge_ms": round((converged - t0) * 1e3),
            "round_s": round(round_s, 2), "total_s": round(time.monotonic() - t_start, 1)}


def live_change(mesh: MeshLab, ips: Mapping[str, str],
                changed: Mapping[Key, bool]) -> dict[str, int | None]:
    """Apply POLICY_CHANGE while the probes it changes are polled; how long until they match.

    The pollers run before the apply starts, so an agent that is faster than the CLI is seen
    too. Propagation counts from the server's commit (its audit entry) and, as the operator
    sees it, from the CLI returning (0 when every agent was done before that)."""
    pollers = Probers(mesh, ips, changed, POLL_TIMEOUT_S, CONVERGE_DEADLINE_S)
    try:
        pollers.wait_started()
        t_call = time.monotonic()
        mesh.admin("policy", "apply", str(POLICY_CHANGE))
        t_returned = time.monotonic()
        settled = settled_at(pollers.results())
    finally:
        pollers.close()
    entry = mesh.admin("audit", "--limit", "1")[0]
    if entry["action"] != "policy.apply":
        raise LabError(f"expected the live apply as the last audit entry, got {entry}")
    at = datetime.fromisoformat(entry["at"])
    at = at if at.tzinfo else at.replace(tzinfo=UTC)  # SQLite hands back naive UTC
    # The commit's wall clock onto this process's monotonic clock (one machine, one clock).
    committed = at.timestamp() - time.time() + time.monotonic()
    return {
        "propagation_ms": None if settled is None else round((settled - committed) * 1e3),
        "propagation_after_cli_ms": (None if settled is None
                                     else round(max(0.0, settled - t_returned) * 1e3)),
        "apply_cli_ms": round((t_returned - t_call) * 1e3),
    }


def summary_table(title: str, tally: Tally) -> Table:
    t = Table(title=title)
    for col in ("proto", "probes", "allowed_ok", "denied_blocked", "violations"):
        t.add_column(col, justify="left" if col == "proto" else "right")
    for proto in ("tcp", "udp", "icmp"):
        c = tally.counts.get(proto, {})
        v = c.get("violations", 0)
        t.add_row(proto, str(c.get("probes", 0)), str(c.get("allowed_ok", 0)),
                  str(c.get("denied_blocked", 0)), f"[red]{v}[/]" if v else "0")
    s = tally.summary()
    t.add_row("[bold]all[/]", *(str(s[k]) for k in ("probes", "allowed_ok", "denied_blocked",
                                                    "violations")))
    return t
