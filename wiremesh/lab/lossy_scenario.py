"""Routing over a bad network: the failover lab (`failover_scenario`) with 2 % random loss and
0-100 ms of delay (50 ms of jitter around 50 ms) on every host's link to the internet (tc
netem). Where the kernel has no netem (CONFIG_NET_SCH_NETEM unset, as on this project's CI
machines), nftables drops 2 % of the packets each way on every link instead, and the jitter
is missing: the figures say which was applied (`lossy_impairment`).

First the network is only bad for `minutes`: the clients' echoes flow through their router
and no client may fail over (`spurious_failovers`, from the agents' own failover counters).
Then routers are really broken (kill, link down, blackhole, in turn) and each interruption is
measured as in `wiremesh lab failover`.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from wiremesh.lab.failover_scenario import (
    CLIENTS,
    METHODS,
    OUTSIDER,
    ROUTER_METRICS,
    FailoverScenario,
    Trial,
    trial_row,
    trials_table,
)
from wiremesh.lab.figures import percentile
from wiremesh.lab.layout import Layout
from wiremesh.lab.mesh import MeshLab
from wiremesh.lab.topology import mesh_lab

# Each host's egress onto the internet: every packet between two hosts crosses one of these.
NETEM = ("delay", "50ms", "50ms", "loss", "random", "2%")
LOSS_PERCENT = 2
FAILOVERS = "wiremesh_agent_route_failovers"


def _nft_loss(link: str) -> str:
    drop = f"numgen random mod 100 < {LOSS_PERCENT} drop"
    return (f"table inet wmlab_lossy {{\n"
            f"\tchain in {{ type filter hook prerouting priority raw; policy accept; "
            f'iifname "{link}" {drop}; }}\n'
            f"\tchain out {{ type filter hook postrouting priority raw; policy accept; "
            f'oifname "{link}" {drop}; }}\n}}\n')


def impair(mesh: MeshLab) -> str:
    """Make every host's internet link lossy (and jittery with netem); returns what was
    applied."""
    internet = mesh.topo.internet
    hosts = [mesh.server, *(a.host for a in mesh.agents.values())]
    netem = all(h.run(["tc", "qdisc", "replace", "dev", mesh.lab.link_of(h, internet), "root",
                       "netem", *NETEM], check=False).returncode == 0 for h in hosts)
    if netem:
        return "netem " + " ".join(NETEM)
    for h in hosts:
        h.run(["tc", "qdisc", "del", "dev", mesh.lab.link_of(h, internet), "root"], check=False)
        rules = mesh.lab.log_dir / f"lossy-{h.name}.nft"
        rules.write_text(_nft_loss(mesh.lab.link_of(h, internet)))
        h.run(["nft", "-f", str(rules)])
    return (f"nftables: {LOSS_PERCENT} % random drop each way on every link "
            "(no netem in this kernel: no jitter)")


def client_failovers(mesh: MeshLab) -> int:
    return sum(int(mesh.agents[c].metrics().get(FAILOVERS, 0)) for c in CLIENTS)


def run_lossy(console: Console, minutes: float, trials: int,
              run_id: str | None = None) -> dict[str, Any]:
    layout = Layout.public([*ROUTER_METRICS, *CLIENTS, OUTSIDER])
    with mesh_lab(layout, console, run_id) as mesh:
        console.print(f"lossy lab [bold]{mesh.lab.id}[/]: routers {', '.join(ROUTER_METRICS)}, "
                      f"clients {', '.join(CLIENTS)}")
        scenario = FailoverScenario(mesh, console)
        scenario.setup()
        scenario.wait_steady()
        impairment = impair(mesh)
        console.print(f"every link impaired: {impairment}")
        before = client_failovers(mesh)
        end = time.monotonic() + minutes * 60
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 30.0))
            console.print(f"lossy network: {max(0.0, end - time.monotonic()) / 60:.1f} min "
                          f"left, client failovers so far {client_failovers(mesh) - before}")
        spurious = client_failovers(mesh) - before
        done: list[Trial] = []
        for n in range(1, trials + 1):
            t = scenario.trial(n, METHODS[(n - 1) % len(METHODS)], server_up=True)
            console.print("lossy trial", *trial_row(t)[:4], f"{t.worst_ms} ms",
                          highlight=False)
            done.append(t)
    console.print(trials_table(done))
    worst = [t.worst_ms for t in done]
    measured = [w for w in worst if w is not None]
    return {
        "lossy_minutes": round(minutes, 2),
        "lossy_impairment": impairment,
        "spurious_failovers": spurious,
        # A trial that never recovered is an infinite interruption: no p99 then.
        "lossy_failover_ms_p99": (percentile(measured, 99)
                                  if measured and len(measured) == len(worst) else None),
        "lossy_trials": len(done),
        "lossy_failover_ms_max": max(measured, default=None),
    }
