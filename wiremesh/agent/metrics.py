"""Prometheus metrics of the agent (served when `--metrics-listen` is given)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from wiremesh.agent.relay_link import RelayLink

NETMAP_VERSION = Gauge("wiremesh_agent_netmap_version", "Version of the netmap being enforced")
PEERS = Gauge("wiremesh_agent_peers", "WireGuard peers configured from the netmap")
INBOUND_RULES = Gauge("wiremesh_agent_inbound_rules", "Inbound ACL rules enforced")
SERVER_CONNECTED = Gauge("wiremesh_agent_server_connected",
                         "1 while the netmap stream is open, 0 while running on the saved map")
CREDENTIALS_REFUSED = Gauge(
    "wiremesh_agent_credentials_refused",
    "1 while the server answers 401 to this peer's token (old backup, empty database or "
    "deleted peer); the agent keeps its last netmap and retries")
NETMAP_UPDATES = Counter("wiremesh_agent_netmap_updates_total", "Netmaps applied")
FAILOVERS = Gauge("wiremesh_agent_route_failovers", "Routed prefixes moved to another router")
BAD_MESSAGES = Counter("wiremesh_agent_bad_messages_total",
                       "Netmap stream messages refused (invalid); the held netmap stays")


class RelayCollector:
    """The relay link's counters, read when /metrics is scraped (nothing per packet)."""

    def __init__(self) -> None:
        self.link: RelayLink | None = None

    def collect(self) -> Iterator[Metric]:
        link = self.link
        if link is None:
            return
        s = link.stats
        packets = CounterMetricFamily("wiremesh_agent_relay_packets",
                                      "Packets through the relay", labels=["direction"])
        packets.add_metric(["to_relay"], s.to_relay_packets)
        packets.add_metric(["from_relay"], s.from_relay_packets)
        nbytes = CounterMetricFamily("wiremesh_agent_relay_bytes",
                                     "Packet bytes through the relay", labels=["direction"])
        nbytes.add_metric(["to_relay"], s.to_relay_bytes)
        nbytes.add_metric(["from_relay"], s.from_relay_bytes)
        dropped = CounterMetricFamily("wiremesh_agent_relay_dropped",
                                      "Packets the relay link could not pass on", s.dropped)
        in_use = GaugeMetricFamily("wiremesh_agent_relay_connected",
                                   "1 while connected to the relay named in `url`",
                                   labels=["url"])
        in_use.add_metric([link.relay_in_use or ""], 1 if link.relay_in_use else 0)
        relayed = GaugeMetricFamily("wiremesh_agent_relay_peers",
                                    "Peers with a loopback endpoint on the relay link",
                                    len(link.peers))
        yield from (packets, nbytes, dropped, in_use, relayed)


RELAY = RelayCollector()
REGISTRY.register(RELAY)
STUN = Counter("wiremesh_agent_stun_requests_total",
               "STUN mapping measurements of the WireGuard port", ["outcome"])
PATHS = Gauge("wiremesh_agent_peer_paths", "Peers by the path their packets take",
              ["path"])
PUNCH_ATTEMPTS = Gauge("wiremesh_agent_punch_attempts",
                       "Hole-punch attempts: probe bursts toward a peer's candidates")
PUNCH_SUCCESSES = Gauge("wiremesh_agent_punch_successes",
                        "Probe bursts that found a direct path")
