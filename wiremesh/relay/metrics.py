"""Prometheus metrics of a relay (embedded: on the server's /metrics; standalone: its own)."""

from prometheus_client import Counter, Gauge

CLIENTS = Gauge("wiremesh_relay_clients", "Peers connected to this relay")
REFUSED = Counter("wiremesh_relay_refused_total", "Connections refused (no valid credential)")
FRAMES = Counter("wiremesh_relay_frames_total", "Frames received from peers, by outcome",
                 ["outcome"])
BYTES = Counter("wiremesh_relay_forwarded_bytes_total", "Packet bytes forwarded")
