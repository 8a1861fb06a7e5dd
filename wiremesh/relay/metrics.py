"""Prometheus metrics of a relay (embedded: on the server's /metrics; standalone: its own)."""

from prometheus_client import Counter, Gauge

CLIENTS = Gauge("wiremesh_relay_clients", "Peers connected to this relay")
REFUSED = Counter("wiremesh_relay_refused_total", "Connections refused (no valid credential)")
FRAMES = Counter("wiremesh_relay_frames_total", "Frames received from peers, by outcome",
                 ["outcome"])
# Bound once: the per-frame path does no label lookup.
FRAME_OUTCOMES = {o: FRAMES.labels(o) for o in (
    "forwarded", "malformed", "unauthorised", "no_destination", "congested")}
BYTES = Counter("wiremesh_relay_forwarded_bytes_total", "Packet bytes forwarded")
