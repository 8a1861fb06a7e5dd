"""Policy compiler benchmark: full compile of a large synthetic mesh, then incremental changes.

    .venv/bin/python bench/policy_compile.py [--peers 10000 --groups 500 --policies 2000]

The synthetic mesh mirrors how meshes are used: ~20% of the groups are teams (5-50 people),
the rest services (2-20 servers); 60% of the policies open a service to a team, 35% a service
to another service, 5% a team to a team, with a mix of protos and ports (20% port ranges), 5%
also open a routed prefix; five broad policies make hubs (everyone -> DNS/NTP/log collectors,
admins/monitoring -> everyone), and 20 routes have two routers each. A broad `all -> all`
policy is left out on purpose: it makes every netmap O(N) and the mesh O(N^2), whatever the
compiler does. The incremental figures in the JSON line are over the changes that touched at
most 1% of the peers (the target class); the table also shows every change. Every incremental
result is checked against a full recompile at sample points (and at the end of each scenario).

Prints a table, then as the very last line one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from wiremesh.core.models import MeshState, PeerInfo, Policy, PortRange, Route
from wiremesh.core.policy import PolicyCompiler, compile_netmaps


def overlay_ip(i: int) -> str:
    return f"100.64.{i // 250}.{i % 250 + 1}"


def make_peer(i: int) -> PeerInfo:
    return PeerInfo(i, f"peer{i}", f"key{i:040d}=", overlay_ip(i),
                    (f"192.0.2.{i % 250 + 1}:51820",))


def synthetic_mesh(n_peers: int, n_groups: int, n_policies: int, seed: int = 7) -> MeshState:
    rnd = random.Random(seed)
    peers = {i: make_peer(i) for i in range(1, n_peers + 1)}
    ids = list(peers)
    hubs = {  # small groups that broad policies point at
        "dns": 5, "ntp": 3, "logs": 2, "admins": 5, "monitoring": 3,
    }
    groups: dict[str, frozenset[int]] = {g: frozenset(rnd.sample(ids, k)) for g, k in hubs.items()}
    teams, services = [], []
    n_routes = 20
    for i in range(n_routes):
        groups[f"routers{i}"] = frozenset(rnd.sample(ids, 2))
    while len(groups) < n_groups:
        i = len(groups)
        if rnd.random() < 0.2:  # teams: who people are
            name, size = f"team{i}", rnd.randint(5, 50)
            teams.append(name)
        else:  # services: what people reach
            name, size = f"svc{i}", rnd.randint(2, 20)
            services.append(name)
        groups[name] = frozenset(rnd.sample(ids, size))

    routes = tuple(Route(f"net{i}", f"198.18.{i}.0/24", f"routers{i}", metric=100,
                         router_metrics=((f"peer{min(groups[f'routers{i}'])}", 50),))
                   for i in range(n_routes))
    broad = [
        Policy("all-dns", ("all",), ("dns",), "udp", (PortRange(53, 53),)),
        Policy("all-ntp", ("all",), ("ntp",), "udp", (PortRange(123, 123),)),
        Policy("all-logs", ("all",), ("logs",), "tcp", (PortRange(514, 514),)),
        Policy("admins-ssh", ("admins",), ("all",), "tcp", (PortRange(22, 22),)),
        Policy("monitoring", ("monitoring",), ("all",), "tcp", (PortRange(9100, 9100),)),
    ]
    policies = list(broad)
    while len(policies) < n_policies:
        i = len(policies)
        proto = rnd.choices(["tcp", "udp", "icmp", "all"], [60, 20, 10, 10])[0]
        ports: tuple[PortRange, ...] = ()
        if proto in ("tcp", "udp"):
            if rnd.random() < 0.2:
                a = rnd.randint(1024, 60000)
                ports = (PortRange(a, a + rnd.randint(1, 500)),)
            else:
                ports = tuple(PortRange(p, p) for p in sorted(rnd.sample(
                    [22, 80, 443, 5432, 6379, 8080, 8443, 9000, 3000, 53], rnd.randint(1, 3))))
        kind = rnd.random()
        src = rnd.choice(teams) if kind < 0.6 or kind > 0.95 else rnd.choice(services)
        dst = rnd.choice(teams) if kind > 0.95 else rnd.choice(services)
        routes_to = (f"net{rnd.randrange(n_routes)}",) if rnd.random() < 0.05 else ()
        policies.append(Policy(f"pol{i}", (src,), (dst,), proto, ports,
                               bidirectional=rnd.random() < 0.05, destination_routes=routes_to))
    return MeshState(peers, groups, tuple(policies), routes)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def verify(c: PolicyCompiler) -> None:
    full = compile_netmaps(c.state())
    if dict(c.netmaps) != full:
        bad = [k for k in full if full[k] != c.netmaps.get(k)]
        raise SystemExit(f"incremental result differs from a full compile for peers {bad[:10]}")


# A scenario step prepares one change outside the clock and returns the timed part.
Step = Callable[[PolicyCompiler, random.Random, int], Callable[[], set[int]]]


def add_to_group(c: PolicyCompiler, rnd: random.Random, _i: int) -> Callable[[], set[int]]:
    st = c.state()
    g = rnd.choice(sorted(k for k in st.groups if k.startswith("svc")))
    members = st.groups[g] | {rnd.choice(list(st.peers))}
    return lambda: c.set_group(g, members)


def edit_policy(c: PolicyCompiler, rnd: random.Random, _i: int) -> Callable[[], set[int]]:
    p = rnd.choice([p for p in c.state().policies if p.name.startswith("pol")])
    port = rnd.randint(1, 65535)
    edited = dataclasses.replace(p, protocol="tcp", ports=(PortRange(port, port),))
    return lambda: c.upsert_policy(edited)


def peer_joins(c: PolicyCompiler, rnd: random.Random, i: int) -> Callable[[], set[int]]:
    """A new peer enrols with two auto-groups (a team and a service): one new snapshot."""
    st = c.state()
    pid = 1_000_000 + i
    team = rnd.choice(sorted(k for k in st.groups if k.startswith("team")))
    svc = rnd.choice(sorted(k for k in st.groups if k.startswith("svc")))
    new = dataclasses.replace(
        st, peers={**st.peers, pid: make_peer(pid)},
        groups={**st.groups, team: st.groups[team] | {pid}, svc: st.groups[svc] | {pid}})
    return lambda: c.update(new)


def run_scenario(c: PolicyCompiler, step: Step, n: int, rnd: random.Random,
                 checks: set[int]) -> tuple[list[float], list[int]]:
    times, touched = [], []
    for i in range(n):
        change = step(c, rnd, i)
        t0 = time.perf_counter()
        changed = change()
        times.append((time.perf_counter() - t0) * 1000)
        touched.append(len(changed))
        if i in checks:
            verify(c)
    verify(c)
    return times, touched


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=10_000)
    ap.add_argument("--groups", type=int, default=500)
    ap.add_argument("--policies", type=int, default=2_000)
    ap.add_argument("--changes", type=int, default=100, help="changes per scenario")
    args = ap.parse_args()
    console = Console(width=120)
    rnd = random.Random(11)

    state = synthetic_mesh(args.peers, args.groups, args.policies)
    t0 = time.perf_counter()
    c = PolicyCompiler(state)
    full_s = time.perf_counter() - t0
    rss = rss_mb()
    sizes = [len(nm.peers) for nm in c.netmaps.values()]
    rules = sum(len(nm.inbound) for nm in c.netmaps.values())

    # An update() from a snapshot rebuilt from scratch (no shared objects), as a server that
    # reloads its store gives: the diff itself is O(N) comparisons.
    rebuilt = synthetic_mesh(args.peers, args.groups, args.policies)
    t1 = time.perf_counter()
    c.update(rebuilt)
    noop_ms = (time.perf_counter() - t1) * 1000

    table = Table(title=f"policy compile: {args.peers} peers, {len(state.groups)} groups, "
                        f"{len(state.policies)} policies, {len(state.routes)} routes")
    for col in ("measure", "p50 ms", "p99 ms", "max ms", "peers changed p50", "max"):
        table.add_column(col, justify="right")
    table.add_row("full compile", f"{full_s * 1000:.0f}", "", "", "", "")
    table.add_row("update(): no-op diff of a rebuilt snapshot", f"{noop_ms:.1f}", "", "", "", "")
    small: list[float] = []  # changes that touched <= 1% of the peers: the target class
    every: list[float] = []
    for label, step in (("peer added to a service group", add_to_group),
                        ("policy edited (ports)", edit_policy),
                        ("peer joins (update() of a snapshot)", peer_joins)):
        checks = set(rnd.sample(range(args.changes), 2))
        times, touched = run_scenario(c, step, args.changes, rnd, checks)
        every += times
        small += [t for t, n in zip(times, touched, strict=True) if n <= args.peers // 100]
        table.add_row(label, f"{pct(times, .5):.2f}", f"{pct(times, .99):.2f}",
                      f"{max(times):.2f}", f"{statistics.median(touched):.0f}",
                      f"{max(touched)}")
    table.add_row(f"changes touching <= 1% of peers ({len(small)} of {len(every)})",
                  f"{pct(small, .5):.2f}", f"{pct(small, .99):.2f}", f"{max(small):.2f}", "", "")
    console.print(table)
    console.print(f"netmap peers per peer: median {statistics.median(sizes):.0f}, "
                  f"max {max(sizes)}; inbound rules in total: {rules}; "
                  f"RSS after full compile {rss:.0f} MB; every "
                  f"scenario checked against a full recompile (2 samples + end)")
    print(json.dumps({
        "peers": args.peers, "groups": len(state.groups), "policies": len(state.policies),
        "full_compile_s": round(full_s, 3),
        "incremental_ms_p50": round(pct(small, .5), 3),
        "incremental_ms_p99": round(pct(small, .99), 3),
        "rss_mb": round(rss, 1),
        "incremental_ms_p99_all_changes": round(pct(every, .99), 3),
        "noop_update_ms": round(noop_ms, 2),
    }))


if __name__ == "__main__":
    main()
