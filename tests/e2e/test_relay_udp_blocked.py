"""Two real wireguard-go peers whose networks drop all UDP talk through the server's
embedded relay: only their WireGuard endpoints point at `RelayLink` loopback sockets."""

from __future__ import annotations

import pytest

from wiremesh.agent.relay_link import relay_urls
from wiremesh.lab.mesh import host_metrics, ping_pairs, wait_until
from wiremesh.lab.netns import NO_UDP_TABLE, Lab
from wiremesh.lab.relay_pair import relay_pair

pytestmark = pytest.mark.e2e


def test_pings_cross_the_relay_when_udp_is_blocked() -> None:
    with Lab() as lab, relay_pair(lab) as (mesh, a, b):
        assert NO_UDP_TABLE in a.host.run(["nft", "list", "tables"]).stdout
        relay = relay_urls(mesh.url, ["/api/v1/relay"])[0]
        # One side opens the tunnel first: these bare wireguard-go devices lack the agent's
        # first-contact logic, so pinging both ways at once crosses their initiations again
        # and again (each 5 s retry starts on both sides together).
        first = ping_pairs([(a.host, b.overlay_ip)], deadline_s=20)
        assert all(v is not None for v in first.values()), first
        rtt = ping_pairs([(a.host, b.overlay_ip), (b.host, a.overlay_ip)], deadline_s=20)
        assert all(v is not None for v in rtt.values()), rtt
        # The packets went through both links and the server's relay, and the handshake
        # completed over it.
        for p in (a, b):
            m = host_metrics(p.host)
            assert m['wiremesh_agent_relay_packets_total{direction="from_relay"}'] > 0, m
            assert m[f'wiremesh_agent_relay_connected{{url="{relay}"}}'] == 1, m
        srv = host_metrics(mesh.server, f"{mesh.url}/metrics", mesh.tls.ca_file)
        assert srv['wiremesh_relay_frames_total{outcome="forwarded"}'] >= 4
        wait_until(lambda: a.wg.status().peers[b.public_key].last_handshake > 0, 5,
                   "a handshake over the relay")
        # wireguard-go kept the loopback endpoint: nothing went direct.
        assert a.wg.status().peers[b.public_key].endpoint.startswith("127.0.0.1:")
