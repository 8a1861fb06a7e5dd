"""One way to build a lab: a simulated internet (a switch), hosts on it, the server and agents.

Scenarios, benchmarks and tests describe what they need and compose it here instead of wiring
namespaces themselves:

    with mesh_lab(["a1", "a2"], console) as mesh:   # server + agents on the internet
        mesh.start("demo")

or, piece by piece, `Topology(lab).public_host(name)` for hosts of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from rich.console import Console

from wiremesh.lab.mesh import MeshLab
from wiremesh.lab.netns import Host, Lab, Switch
from wiremesh.lab.pki import make_server_cert

INTERNET = "192.0.2.0/24"
SERVER = "srv"


class Topology:
    """The lab's network: one internet switch and the hosts plugged into it."""

    def __init__(self, lab: Lab, internet: str = INTERNET) -> None:
        self.lab = lab
        self.internet: Switch = lab.add_switch("u", internet)

    def public_host(self, name: str, address: str | None = None) -> Host:
        """A host on the internet; `address` (with prefix length) or the switch's next one."""
        host = self.lab.add_host(name)
        self.lab.connect(host, self.internet, address)
        return host


def build_mesh(lab: Lab, agent_names: Iterable[str], internet: str = INTERNET) -> MeshLab:
    """A server and one agent per name, all on the internet (nothing started yet)."""
    topo = Topology(lab, internet)
    server = topo.public_host(SERVER)
    mesh = MeshLab(topo, server, make_server_cert(lab.log_dir / "pki", [server.ip]))
    for name in agent_names:
        mesh.add_agent(name, topo.public_host(name))
    return mesh


@contextlib.contextmanager
def mesh_lab(agent_names: Iterable[str], console: Console,
             run_id: str | None = None) -> Iterator[MeshLab]:
    """A lab with `build_mesh` in it, torn down on exit; on failure the logs are printed first."""
    with Lab(run_id) as lab:
        mesh = build_mesh(lab, agent_names)
        try:
            yield mesh
        except BaseException:
            mesh.print_logs(console)
            raise
