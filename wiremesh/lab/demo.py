"""`wiremesh lab demo`: a real server and real agents mesh up; then the server dies and the
mesh keeps working, even across an agent restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from wiremesh.lab.layout import Layout
from wiremesh.lab.mesh import MeshLab, ping_pairs
from wiremesh.lab.netns import Host
from wiremesh.lab.topology import mesh_lab


def pair_table(title: str, headers: Mapping[str, str], cell: Callable[[str, str], str]) -> Table:
    """A from/to matrix over the peers named in `headers` (name -> column heading)."""
    names = list(headers)
    t = Table(title=title)
    t.add_column("from \\ to")
    for n in names:
        t.add_column(headers[n], justify="center")
    for src in names:
        t.add_row(src, *("-" if src == dst else cell(src, dst) for dst in names))
    return t


def rtt_table(title: str, mesh: MeshLab, ips: dict[str, str],
              result: dict[tuple[str, str], float | None]) -> Table:
    def cell(src: str, dst: str) -> str:
        rtt = result.get((src, ips[dst]))
        return "[red]✗[/]" if rtt is None else f"[green]✓[/] {rtt:.1f}ms"

    return pair_table(title, {n: f"{n}\n{ips[n]}" for n in mesh.agents}, cell)


def all_pairs(mesh: MeshLab, ips: dict[str, str]) -> list[tuple[Host, str]]:
    return [(a.host, ips[b]) for a_name, a in mesh.agents.items() for b in mesh.agents
            if b != a_name]


def run_demo(n_agents: int, console: Console, run_id: str | None = None) -> dict[str, Any]:
    layout = Layout.public(f"a{i}" for i in range(1, n_agents + 1))
    with mesh_lab(layout, console, run_id) as mesh:
        console.print(f"lab [bold]{mesh.lab.id}[/]: 1 server + {n_agents} agents on "
                      f"{mesh.topo.internet.network}")
        return _scenario(mesh, n_agents, console)


def _scenario(mesh: MeshLab, n: int, console: Console) -> dict[str, Any]:
    mesh.start_server()
    key = mesh.create_setup_key("demo")
    t0 = time.monotonic()
    mesh.start_agents(key)
    mesh.wait_agents_configured(mesh.agents.values(), n - 1)
    ips = {name: a.overlay_ip for name, a in mesh.agents.items()}
    pairs = all_pairs(mesh, ips)
    up = ping_pairs(pairs, deadline_s=30)
    ready_s = time.monotonic() - t0
    ok = sum(v is not None for v in up.values())
    console.print(rtt_table(f"overlay pings, server up ({ok}/{len(pairs)})", mesh, ips, up))

    console.print("stopping the server and restarting agent a1 from its saved netmap ...")
    mesh.stop_server()
    victim = mesh.agents["a1"]
    mesh.stop_agent(victim)
    mesh.start_agent(victim)
    mesh.wait_agents_configured([victim], n - 1)
    down = ping_pairs(pairs, deadline_s=30)
    ok_down = sum(v is not None for v in down.values())
    console.print(rtt_table(f"overlay pings, server DOWN, a1 restarted ({ok_down}/{len(pairs)})",
                             mesh, ips, down))
    return {"peers": n, "pairs_total": len(pairs), "pairs_ok": ok,
            "pairs_ok_server_down": ok_down, "mesh_ready_s": round(ready_s, 2)}
