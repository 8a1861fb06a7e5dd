"""Prometheus metrics of the server."""

from prometheus_client import Counter, Gauge

ENROLMENTS = Counter("wiremesh_enrolments_total", "Peers enrolled")
STREAMS = Gauge("wiremesh_netmap_streams", "Open netmap streams")
PUSHES = Counter("wiremesh_netmap_pushes_total", "Netmap messages sent", ["kind"])
REVISION = Gauge("wiremesh_revision", "Store revision the netmaps reflect")
STUN = Counter("wiremesh_stun_requests_total", "STUN datagrams by outcome", ["outcome"])
