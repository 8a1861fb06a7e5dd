"""Policy compiler benchmark: full compile of a realistic organisation's mesh, then single
changes applied incrementally.

    .venv/bin/python bench/policy_compile.py [--peers 100000] [--changes 100]
    .venv/bin/python bench/policy_compile.py --compiler /tmp/old_policy.py   # compare

The mesh is `wiremesh.lab.org.org_mesh` (people in teams, servers in services, policies
between teams and services, infrastructure per site of ~2,000 peers;
about 240 groups and 650 policies at 10,000 peers, ten times that at 100,000). The changes are
the everyday ones, each applied the way the server's hub applies what its change log tells it
(one `MeshChange` per refresh, `PolicyCompiler.apply`): a peer added to a team or service, a
peer joining the mesh (with its groups), a peer leaving it (and its groups), a policy's ports
edited (`--changes` of each). The incremental
time of a change includes compiling every netmap it changed; times are wall clock and CPU
time of the thread (on a shared machine the CPU time is the part that is ours). Every
scenario ends checked against a full recompile.

While a change is applied the bench holds every peer's previous netmap, as the hub does (it
diffs against them and keeps a few for resumes), so the compiler frees no replaced peer table
or rule set then: the hub frees them later, when they leave its history. What freeing them at
once would add is measured too ("with freeing"), and reported next to it.

`--compiler FILE` loads `PolicyCompiler` from another copy of `wiremesh/core/policy.py` (e.g.
`git show main~5:wiremesh/core/policy.py > /tmp/old.py`), to compare two versions on the same
machine in the same minutes.

Prints a table, then as the very last line one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import ipaddress
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.table import Table

from wiremesh.core.models import MeshChange, MeshState, PeerInfo, PortRange
from wiremesh.core.wire import Netmap
from wiremesh.lab.org import org_mesh

OVERLAY = ipaddress.IPv4Network("100.64.0.0/10")


def make_peer(i: int) -> PeerInfo:
    return PeerInfo(i, f"peer{i}", f"key{i:040d}=", str(OVERLAY.network_address + i),
                    (f"192.0.2.{i % 250 + 1}:51820",))


def mesh(n_peers: int) -> MeshState:
    return org_mesh(n_peers).mesh_state([make_peer(i + 1) for i in range(n_peers)])


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Compiler(Protocol):
    """What the benchmark uses of a `PolicyCompiler` (this tree's or another version's)."""

    def __init__(self, state: MeshState) -> None: ...
    @property
    def netmaps(self) -> Mapping[int, Netmap]: ...
    def state(self) -> MeshState: ...
    def update(self, new: MeshState) -> set[int]: ...
    def apply(self, change: MeshChange) -> set[int]: ...


def load_compiler(path: str | None) -> type[Compiler]:
    if path is None:
        from wiremesh.core.policy import PolicyCompiler
        return PolicyCompiler
    spec = importlib.util.spec_from_file_location("other_policy", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    compiler: type[Compiler] = module.PolicyCompiler
    return compiler


# A scenario step prepares one change outside the clock and returns the timed part.
Step = Callable[[Compiler, random.Random, int], Callable[[], set[int]]]


class Scenarios:
    def __init__(self, state: MeshState) -> None:
        self.groups = sorted(g for g in state.groups if g.startswith(("team", "svc")))
        self.teams = [g for g in self.groups if g.startswith("team")]
        self.services = [g for g in self.groups if g.startswith("svc")]
        self.policies = [p for p in state.policies if p.name.startswith(("team", "svc"))]
        self.next_id = 1_000_000

    def add_to_group(self, c: Compiler, rnd: random.Random, _i: int) -> Callable[[], set[int]]:
        st = c.state()
        g = rnd.choice(self.groups)
        change = MeshChange(groups={g: st.groups[g] | {rnd.choice(list(st.peers))}})
        return lambda: c.apply(change)

    def peer_joins(self, c: Compiler, rnd: random.Random, _i: int) -> Callable[[], set[int]]:
        """A new peer enrols into a team or a service and its site (setup key auto-groups)."""
        st = c.state()
        self.next_id += 1
        p = make_peer(self.next_id)
        g = rnd.choice(self.teams if rnd.random() < 0.6 else self.services)
        sites = Counter(s for s, m in st.groups.items() if s.startswith("site")
                        for pid in st.groups[g] if pid in m)
        site = sites.most_common(1)[0][0]
        change = MeshChange(peers={p.id: p},
                            groups={g: st.groups[g] | {p.id}, site: st.groups[site] | {p.id}})
        return lambda: c.apply(change)

    def peer_leaves(self, c: Compiler, rnd: random.Random, _i: int) -> Callable[[], set[int]]:
        st = c.state()
        pid = rnd.choice(list(st.peers))
        change = MeshChange(peers={pid: None}, groups={
            g: m - {pid} for g, m in st.groups.items() if pid in m and g != "all"})
        return lambda: c.apply(change)

    def edit_policy(self, c: Compiler, rnd: random.Random, _i: int) -> Callable[[], set[int]]:
        p = rnd.choice(self.policies)
        port = rnd.randint(1, 65535)
        edited = dataclasses.replace(p, protocol="tcp", ports=(PortRange(port, port),))
        change = MeshChange(policies={p.name: edited})
        return lambda: c.apply(change)


class Clock:
    """Wall-clock and CPU time of what runs inside (the machine may be shared: CPU time is
    the part that does not depend on the neighbours)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = (time.perf_counter() - self.wall) * 1000
        self.cpu = (time.thread_time() - self.cpu) * 1000


class CollectorTime:
    """Time the cyclic garbage collector ran (gc.callbacks), in ms: pauses a change sat
    through, and every pause while the scenario ran (also between changes), since a compiler
    can move the collector's work out of its changes without saving any."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0

    def __enter__(self) -> CollectorTime:
        gc.callbacks.append(self._seen)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._seen)

    def _seen(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.total += (time.perf_counter() - self._start) * 1000


@dataclasses.dataclass
class Timings:
    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)
    gc_in: list[float] = dataclasses.field(default_factory=list)  # collector within a change
    touched: list[int] = dataclasses.field(default_factory=list)
    freed: list[float] = dataclasses.field(default_factory=list)  # wall ms, with freeing
    gc_total: float = 0.0  # collector while the scenario ran, in and between changes


def run_scenario(c: Compiler, step: Step, n: int, rnd: random.Random,
                 full: type[Compiler]) -> tuple[Timings, float]:
    t = Timings()
    with CollectorTime() as collector:
        for i in range(n):
            change = step(c, rnd, i)
            held = dict(c.netmaps)  # as the hub holds them (see the module docstring)
            before = collector.total
            with Clock() as clock:
                changed = change()
            t.gc_in.append(collector.total - before)
            # Free the netmaps the change replaced (the compiler alone would have), not the
            # bench's references to the other 100,000.
            replaced = [held.pop(pid, None) for pid in changed]
            with Clock() as freeing:
                del replaced
            del held
            t.wall.append(clock.wall)
            t.cpu.append(clock.cpu)
            t.freed.append(clock.wall + freeing.wall)
            t.touched.append(len(changed))
    t.gc_total = collector.total
    hwm = status_mb("VmHWM")
    verify(c, full)
    return t, hwm


def verify(c: Compiler, full_compiler: type[Compiler]) -> None:
    full = full_compiler(c.state()).netmaps
    if dict(c.netmaps) != dict(full):
        bad = [k for k in full if full[k] != c.netmaps.get(k)]
        raise SystemExit(f"incremental result differs from a full compile for peers {bad[:10]}")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--peers", type=int, default=100_000)
    ap.add_argument("--changes", type=int, default=100, help="changes per scenario")
    ap.add_argument("--compiler", metavar="FILE",
                    help="load PolicyCompiler from this file (to compare versions)")
    args = ap.parse_args()
    compiler = load_compiler(args.compiler)
    console = Console(width=120)
    rnd = random.Random(11)

    state = mesh(args.peers)
    rss_state = status_mb("VmRSS")
    with Clock() as full:
        c = compiler(state)
    rss = status_mb("VmRSS")
    sizes = sorted(len(nm.peers) for nm in c.netmaps.values())
    rules = sum(len(nm.inbound) for nm in c.netmaps.values())

    # update() from a snapshot rebuilt from scratch (no shared objects), as a server that
    # reloads its whole store gives: the diff itself is O(N) comparisons.
    rebuilt = mesh(args.peers)
    with Clock() as noop:
        c.update(rebuilt)
    del rebuilt

    title = (f"policy compile ({args.compiler or 'this tree'}): {args.peers} peers, "
             f"{len(state.groups)} groups, {len(state.policies)} policies, "
             f"{len(state.routes)} routes")
    table = Table(title=title)
    for col in ("measure", "p50 ms", "p99 ms", "max ms", "CPU p50", "CPU p99",
                "netmaps changed p50", "max"):
        table.add_column(col, justify="right")
    table.add_row("full compile", f"{full.wall:.0f}", "", "", f"{full.cpu:.0f}", "", "", "")
    table.add_row("update(): no-op diff of a rebuilt snapshot", f"{noop.wall:.1f}", "", "",
                  f"{noop.cpu:.1f}", "", "", "")
    sc = Scenarios(state)
    n_groups, n_policies = len(state.groups), len(state.policies)
    del state
    every: list[float] = []
    every_cpu: list[float] = []
    every_gc: list[float] = []
    every_freed: list[float] = []
    gc_total = 0.0
    per: dict[str, float] = {}
    hwm = status_mb("VmHWM")
    for key, label, step in (("add_to_group", "peer added to a team/service", sc.add_to_group),
                             ("peer_joins", "peer joins (into a team/service)", sc.peer_joins),
                             ("peer_leaves", "peer leaves (and its groups)", sc.peer_leaves),
                             ("edit_policy", "policy edited (ports)", sc.edit_policy)):
        t, step_hwm = run_scenario(c, step, args.changes, rnd, compiler)
        times, cpu, touched = t.wall, t.cpu, t.touched
        hwm = max(hwm, step_hwm)
        every += times
        every_cpu += cpu
        every_gc += t.gc_in
        every_freed += t.freed
        gc_total += t.gc_total
        per[key] = round(pct(times, .99), 3)
        table.add_row(label, f"{pct(times, .5):.2f}", f"{pct(times, .99):.2f}",
                      f"{max(times):.2f}", f"{pct(cpu, .5):.2f}", f"{pct(cpu, .99):.2f}",
                      f"{statistics.median(touched):.0f}", f"{max(touched)}")
    table.add_row(f"every change ({len(every)})", f"{pct(every, .5):.2f}",
                  f"{pct(every, .99):.2f}", f"{max(every):.2f}", f"{pct(every_cpu, .5):.2f}",
                  f"{pct(every_cpu, .99):.2f}", "", "")
    table.add_row("every change, with freeing what it replaced", f"{pct(every_freed, .5):.2f}",
                  f"{pct(every_freed, .99):.2f}", f"{max(every_freed):.2f}", "", "", "", "")
    table.add_row("of which the garbage collector", f"{pct(every_gc, .5):.2f}",
                  f"{pct(every_gc, .99):.2f}", f"{max(every_gc):.2f}", "", "", "", "")
    table.add_row("garbage collector per change, in and between changes (mean)",
                  f"{gc_total / len(every):.2f}", "", "", "", "", "", "")
    console.print(table)
    console.print(f"netmap peers per peer: median {statistics.median(sizes):.0f}, p99 "
                  f"{pct([float(s) for s in sizes], .99):.0f}, max {sizes[-1]}; inbound rules "
                  f"in total: {rules}; RSS: mesh state {rss_state:.0f} MB, after full compile "
                  f"{rss:.0f} MB, peak while changing {hwm:.0f} MB; each scenario's end checked "
                  f"against a full recompile")
    print(json.dumps({
        "peers": args.peers, "groups": n_groups, "policies": n_policies,
        "full_compile_s": round(full.wall / 1000, 3),
        "full_compile_cpu_s": round(full.cpu / 1000, 3),
        "incremental_ms_p50": round(pct(every, .5), 3),
        "incremental_ms_p99": round(pct(every, .99), 3),
        "incremental_cpu_ms_p99": round(pct(every_cpu, .99), 3),
        "incremental_with_freeing_ms_p99": round(pct(every_freed, .99), 3),
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(hwm, 1),
        "incremental_ms_p99_by_change": per,
        "gc_in_change_ms_p99": round(pct(every_gc, .99), 3),
        "gc_per_change_ms_mean": round(gc_total / len(every), 3),
        "noop_update_ms": round(noop.wall, 2),
    }))


if __name__ == "__main__":
    main()
