"""Prometheus metrics of one gateway, in a registry of its own (several gateways per test)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

DROP_REASONS = (
    "malformed", "bad_mac1", "rate_limited", "refused_again", "decrypt", "unknown_key",
    "replay", "queue_full", "store_unavailable", "cookie_send_failed", "stale",
)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.initiations = Counter(
            "wiremesh_gateway_initiations", "Handshake initiations sniffed", registry=r)
        self.dropped = Counter(
            "wiremesh_gateway_dropped", "Initiations dropped, by reason", ["reason"], registry=r)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self.dh_operations = Counter(
            "wiremesh_gateway_dh_operations", "X25519 operations done on initiations",
            registry=r)
        self.cookie_replies = Counter(
            "wiremesh_gateway_cookie_replies",
            "Cookie replies sent instead of a DH, by the limit hit (dh_budget, rate_limited, "
            "strikes)", ["reason"], registry=r)
        for reason in ("dh_budget", "rate_limited", "strikes"):
            self.cookie_replies.labels(reason)
        self.cookie_proven = Counter(
            "wiremesh_gateway_cookie_proven",
            "Initiations let through under load because their mac2 proved the source",
            registry=r)
        self.installed = Counter(
            "wiremesh_gateway_installed", "Peers installed just in time", registry=r)
        self.last_install = Gauge(
            "wiremesh_gateway_last_install_time_seconds",
            "Unix time of the last UAPI write that installed peers", registry=r)
        self.evicted = Counter(
            "wiremesh_gateway_evicted", "Peers removed, by reason (ttl, cap)", ["reason"],
            registry=r)
        for reason in ("ttl", "cap"):
            self.evicted.labels(reason)
        self.active = Gauge(
            "wiremesh_gateway_active_peers", "Peers currently installed in WireGuard", registry=r)
        self.known = Gauge(
            "wiremesh_gateway_known_peers", "Peers in the known-peer store", registry=r)
        self.revoked = Counter(
            "wiremesh_gateway_revoked", "Installed peers removed because the server revoked them",
            registry=r)
        self.sync_revision = Gauge(
            "wiremesh_gateway_sync_revision", "Server revision the known-peer cache holds",
            registry=r)
        self.sync_seconds = Gauge(
            "wiremesh_gateway_sync_seconds", "Duration of the last full sync from the server",
            registry=r)
        self.sync_errors = Counter(
            "wiremesh_gateway_sync_errors", "Failed requests to the server's known-peer feed",
            registry=r)
        self.uapi_errors = Counter(
            "wiremesh_gateway_uapi_errors", "Failed WireGuard UAPI writes", registry=r)
        self.guard_errors = Counter(
            "wiremesh_gateway_guard_errors", "Failed nftables guard updates", registry=r)
        self.install_latency = Histogram(
            "wiremesh_gateway_install_seconds", "From sniffed initiation to peer installed",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=r)

        self._server: object | None = None

    def serve(self, host: str, port: int) -> None:
        """Expose /metrics over HTTP from a daemon thread."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # type: ignore[attr-defined]
            self._server.server_close()  # type: ignore[attr-defined]
            self._server = None
