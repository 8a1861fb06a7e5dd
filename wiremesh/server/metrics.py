"""Prometheus metrics of the server."""

from prometheus_client import Counter, Gauge, Histogram

ENROLMENTS = Counter("wiremesh_enrolments_total", "Peers enrolled")
STREAMS = Gauge("wiremesh_netmap_streams", "Open netmap streams")
PUSHES = Counter("wiremesh_netmap_pushes_total", "Netmap messages sent", ["kind"])
REVISION = Gauge("wiremesh_revision", "Store revision the netmaps reflect")
STUN = Counter("wiremesh_stun_requests_total", "STUN datagrams by outcome", ["outcome"])
GC_FULL = Histogram("wiremesh_gc_full_pass_seconds",
                    "Full garbage collections (server/collector.py) by how long they took",
                    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0))
