"""One way to build a lab: a simulated internet (a switch), hosts on it, NATs with a LAN each,
the server, relays and agents. Scenarios, benchmarks and tests describe what they need as a
`Layout` and compose it here instead of wiring namespaces themselves:

    with mesh_lab(Layout.public(["a1", "a2"]), console) as mesh:   # server + agents
        mesh.start("demo")

    layout = Layout({"home": "n1", "cafe": "n2"}, {"n1": NatKind.PORT_PRESERVING,
                                                  "n2": NatKind.RANDOM_PORT}, relays=("relay",))

or, piece by piece, `Topology(lab)` with `public_host`, `add_nat`, `host_behind`, `move`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console

from wiremesh.lab.layout import INTERNET, Layout, NatKind
from wiremesh.lab.mesh import MeshLab
from wiremesh.lab.nat import Nat, lan_subnet, render_ruleset
from wiremesh.lab.netns import Host, Lab, LabError, Switch
from wiremesh.lab.pki import make_server_cert

SERVER = "srv"


class Topology:
    """The lab's network: one internet switch, the hosts on it, NATs and the hosts behind."""

    def __init__(self, lab: Lab, internet: str = INTERNET) -> None:
        self.lab = lab
        self.internet: Switch = lab.add_switch("u", internet)
        self.nats: dict[str, Nat] = {}

    def public_host(self, name: str, address: str | None = None) -> Host:
        """A host on the internet; `address` (with prefix length) or the switch's next one."""
        host = self.lab.add_host(name)
        self.lab.connect(host, self.internet, address)
        return host

    def add_nat(self, name: str, kind: NatKind) -> Nat:
        """A NAT router on the internet with a LAN switch of its own behind it."""
        router = self.public_host(name)
        lan = self.lab.add_switch(name, lan_subnet(len(self.nats) + 1))
        lan_ip = self.lab.connect(router, lan).split("/")[0]
        router.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        ruleset = self.lab.log_dir / f"nat-{name}.nft"
        ruleset.write_text(render_ruleset(kind, self.lab.link_of(router, self.internet),
                                          self.lab.link_of(router, lan)))
        router.run(["nft", "-f", str(ruleset)])
        nat = Nat(name, kind, router, lan, router.ip, lan_ip)
        self.nats[name] = nat
        return nat

    def host_behind(self, name: str, nat: Nat) -> Host:
        host = self.lab.add_host(name)
        self._plug(host, nat)
        return host

    def _plug(self, host: Host, nat: Nat) -> None:
        self.lab.connect(host, nat.lan)
        host.run(["ip", "route", "add", "default", "via", nat.lan_ip])

    def move(self, host: Host, nat: Nat) -> None:
        """Unplug `host` from its network and plug it into `nat`'s LAN, as a laptop that
        changes networks: new address, new public address; its processes keep running."""
        if len(host.addresses) != 1:
            raise LabError(f"{host.name} has {len(host.addresses)} links; move needs one")
        self.lab.disconnect(host, next(iter(host.addresses)))
        self._plug(host, nat)


def build_mesh(lab: Lab, layout: Layout) -> MeshLab:
    """The server, relays and NATs of `layout`, one agent host per peer (nothing started)."""
    topo = Topology(lab, layout.internet)
    server = topo.public_host(SERVER)
    relays = {name: topo.public_host(name) for name in layout.relays}
    for name, kind in layout.nats.items():
        topo.add_nat(name, kind)
    tls = make_server_cert(lab.log_dir / "pki", [server.ip, *(h.ip for h in relays.values())])
    mesh = MeshLab(topo, server, tls, relays=relays)
    for name, nat in layout.peers.items():
        host = topo.public_host(name) if nat is None else topo.host_behind(name, topo.nats[nat])
        mesh.add_agent(name, host)
    return mesh


@contextlib.contextmanager
def mesh_lab(layout: Layout, console: Console, run_id: str | None = None) -> Iterator[MeshLab]:
    """A lab with `build_mesh(layout)` in it, torn down on exit; on failure the logs are
    printed first."""
    with Lab(run_id) as lab:
        mesh = build_mesh(lab, layout)
        try:
            yield mesh
        except BaseException:
            mesh.print_logs(console)
            raise
