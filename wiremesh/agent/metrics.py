"""Prometheus metrics of the agent (served when `--metrics-listen` is given)."""

from prometheus_client import Counter, Gauge

NETMAP_VERSION = Gauge("wiremesh_agent_netmap_version", "Version of the netmap being enforced")
PEERS = Gauge("wiremesh_agent_peers", "WireGuard peers configured from the netmap")
INBOUND_RULES = Gauge("wiremesh_agent_inbound_rules", "Inbound ACL rules enforced")
SERVER_CONNECTED = Gauge("wiremesh_agent_server_connected",
                         "1 while the netmap stream is open, 0 while running on the saved map")
NETMAP_UPDATES = Counter("wiremesh_agent_netmap_updates_total", "Netmaps applied")
FAILOVERS = Gauge("wiremesh_agent_route_failovers", "Routed prefixes moved to another router")
