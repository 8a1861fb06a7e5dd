"""Exit nodes end to end: a client's traffic to an "internet" host leaves through the exit node
policy allows, fails over to the second one when the first dies, while the server and the
peers' underlay addresses stay outside the tunnel; the choice changes on the running agent
(`wiremesh set`), and nothing of it is left when the agent stops."""

from __future__ import annotations

import pytest
from rich.console import Console

from wiremesh.lab import exit_scenario as xs
from wiremesh.lab.mesh import wait_until, wiremesh_cmd
from wiremesh.lab.topology import mesh_lab
from wiremesh.netlink.policyroute import BYPASS_PRIORITY, TUNNEL_PRIORITY

pytestmark = pytest.mark.e2e

LAN_HOST = "192.0.2.200"  # on c1's own network, neither the server nor a peer
SERVER_V6, CLIENT_V6 = "fd00:77::1", "fd00:77::11"  # an IPv6 internet the mesh does not use


def our_rules(x: xs.ExitLab) -> list[str]:
    rules = [line for family in ("-4", "-6")
             for line in x.client.host.run(["ip", family, "rule"]).stdout.splitlines()]
    return [r for r in rules if r.startswith((f"{BYPASS_PRIORITY}:", f"{TUNNEL_PRIORITY}:"))]


def test_exit_node_carries_traffic_fails_over_and_keeps_the_mesh_outside() -> None:
    with mesh_lab(xs.LAYOUT, Console(quiet=True)) as mesh:
        x = xs.build(mesh)
        xs.start(x)
        wg = x.client.ifname

        result = xs.exit_section(x)
        # Failing here means the server or a peer's endpoint was routed into the tunnel.
        assert result["exit_outside_tunnel"] == {"server": True, "e1": True, "e2": True}
        assert result["exit_web_into_tunnel"]
        assert result["exit_failover_ms"] is not None, "traffic never came back through e2"
        assert result["exit_node_ok"]
        # IPv6 to the internet (the exit nodes carry IPv4 only) is refused at once, never
        # sent outside the tunnel; it comes back with the opt-out below.
        for host, ip in ((mesh.server, SERVER_V6), (x.client.host, CLIENT_V6)):
            host.run(["ip", "addr", "add", f"{ip}/64", "nodad", "dev",
                      mesh.lab.link_of(host, mesh.topo.internet)])
        assert x.route_dev(SERVER_V6) is None
        assert not x.client.host.ping(SERVER_V6)
        # The agent's own connection to the server stays up beside the exit node (which
        # way it goes, `exit_outside_tunnel` checked). Polled: the new addresses above wake
        # the agent's endpoint discovery, and a loaded CI machine once caught its stream
        # between two connections.
        wait_until(lambda: x.client.metrics()["wiremesh_agent_server_connected"] == 1, 20,
                   "c1 connected to the server")
        assert x.client.host.http_get(f"{mesh.url}/healthz", ca_file=mesh.tls.ca_file)

        # The local network goes through the exit node unless asked otherwise, which the
        # running agent takes at once.
        assert x.route_dev(LAN_HOST) == wg
        def set_prefs(*args: str) -> None:
            x.client.host.run(wiremesh_cmd("set", "--state-dir", str(x.client.state_dir),
                                           *args))
        set_prefs("--exit-node-allow-lan")
        wait_until(lambda: x.route_dev(LAN_HOST) not in (None, wg), 10,
                   "c1's LAN to leave the tunnel")
        assert x.route_dev(x.web_ip) == wg

        # Opting out gives the machine its own routing back: no way to the outside at all.
        set_prefs("--exit-node", "none")
        wait_until(lambda: x.route_dev(x.web_ip) is None, 10, "c1 to stop using an exit node")
        assert our_rules(x) == []
        assert x.client.host.ping(SERVER_V6, count=3)
        # An exit node policy does not offer (here: no such peer) fails closed: the
        # internet stays in the tunnel, where no peer takes it, and the mesh stays outside.
        set_prefs("--exit-node", "nosuch")
        wait_until(lambda: x.route_dev(x.web_ip) == wg, 10, "c1 to hold its internet traffic")
        assert not x.client.host.ping(x.web_ip)
        assert x.client.host.http_get(f"{mesh.url}/healthz", ca_file=mesh.tls.ca_file)
        set_prefs("--exit-node", "e2")
        wait_until(lambda: x.flowing_via("e2"), 20, "traffic through e2, chosen by name")
        assert our_rules(x)

        mesh.stop_agent(x.client)
        assert our_rules(x) == []
        for family in ("-4", "-6"):
            assert x.client.host.run(["ip", family, "route", "show", "table", "51820"],
                                     check=False).stdout.strip() == ""
