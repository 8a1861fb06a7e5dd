"""Routing over a bad network: the failover lab (`failover_scenario`) with 2 % random loss and
0-100 ms of delay (50 ms of jitter around 50 ms) on every host's link to the internet (tc
netem). Where the kernel has no netem (CONFIG_NET_SCH_NETEM unset, as on this project's CI
machines), the same is done in userspace through NFQUEUE (`netem_queue`): the figures say
which was applied (`lossy_impairment`).

First the network is only bad for `minutes`: the clients' echoes flow through their router
and no client may fail over (`spurious_failovers`, from the agents' own failover counters).
Then routers are really broken (kill, link down, blackhole, in turn) and each interruption is
measured as in `wiremesh lab failover`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
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
from wiremesh.lab.netem_queue import ImpairedLinks, Impairment, impaired_links
from wiremesh.lab.netns import LabError
from wiremesh.lab.topology import mesh_lab

# Each host's egress onto the internet: every packet between two hosts crosses one of these.
NETEM = ("delay", "50ms", "50ms", "loss", "random", "2%")
# The same in userspace where the kernel has no netem.
IMPAIRMENT = Impairment(delay_ms=50, jitter_ms=50, loss_pct=2)
FAILOVERS = "wiremesh_agent_route_failovers"


@contextlib.contextmanager
def impaired(mesh: MeshLab) -> Iterator[tuple[str, ImpairedLinks | None]]:
    """Every host's internet link lossy and jittery while inside the block: what was applied,
    and the userspace impairment's handle when it is the one (None: netem)."""
    internet = mesh.topo.internet
    hosts = [mesh.server, *(a.host for a in mesh.agents.values())]
    netem = all(h.run(["tc", "qdisc", "replace", "dev", mesh.lab.link_of(h, internet), "root",
                       "netem", *NETEM], check=False).returncode == 0 for h in hosts)
    if netem:
        yield "netem " + " ".join(NETEM), None
        return
    for h in hosts:
        h.run(["tc", "qdisc", "del", "dev", mesh.lab.link_of(h, internet), "root"], check=False)
    with impaired_links(mesh.lab, internet, hosts, IMPAIRMENT) as links:
        yield (f"NFQUEUE in userspace: {IMPAIRMENT.describe()} on every host's egress "
               "(no netem in this kernel)"), links


def client_failovers(mesh: MeshLab) -> int:
    return sum(int(mesh.agents[c].metrics().get(FAILOVERS, 0)) for c in CLIENTS)


def run_lossy(console: Console, minutes: float, trials: int,
              run_id: str | None = None) -> dict[str, Any]:
    layout = Layout.public([*ROUTER_METRICS, *CLIENTS, OUTSIDER])
    done: list[Trial] = []
    with mesh_lab(layout, console, run_id) as mesh:
        console.print(f"lossy lab [bold]{mesh.lab.id}[/]: routers {', '.join(ROUTER_METRICS)}, "
                      f"clients {', '.join(CLIENTS)}")
        scenario = FailoverScenario(mesh, console)
        scenario.setup()
        scenario.wait_steady()
        with impaired(mesh) as (impairment, links):
            console.print(f"every link impaired: {impairment}")

            def check_impairment() -> None:
                if links is not None and not links.alive():
                    raise LabError("the netem queue process died: "
                                   f"{links.log.read_text().strip()[-500:]}")

            before = client_failovers(mesh)
            end = time.monotonic() + minutes * 60
            while (left := end - time.monotonic()) > 0:
                time.sleep(min(left, 30.0))
                check_impairment()
                console.print(f"lossy network: {max(0.0, end - time.monotonic()) / 60:.1f} "
                              f"min left, client failovers so far "
                              f"{client_failovers(mesh) - before}")
            spurious = client_failovers(mesh) - before
            for n in range(1, trials + 1):
                t = scenario.trial(n, METHODS[(n - 1) % len(METHODS)], server_up=True)
                console.print("lossy trial", *trial_row(t)[:4], f"{t.worst_ms} ms",
                              highlight=False)
                done.append(t)
            check_impairment()
    console.print(trials_table(done))
    worst = [t.worst_ms for t in done]
    measured = [w for w in worst if w is not None]
    return {
        "lossy_minutes": round(minutes, 2),
        "lossy_impairment": impairment,
        # What the userspace impairment did: packets seen, dropped, released > 10 ms late.
        "lossy_impairment_counts": links.counts if links is not None else None,
        "spurious_failovers": spurious,
        # A trial that never recovered is an infinite interruption: no p99 then.
        "lossy_failover_ms_p99": (percentile(measured, 99)
                                  if measured and len(measured) == len(worst) else None),
        "lossy_trials": len(done),
        "lossy_failover_ms_max": max(measured, default=None),
    }
