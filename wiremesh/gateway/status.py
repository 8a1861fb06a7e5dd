"""`wiremesh gateway status`: a summary of two scrapes of the gateway's /metrics."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

P = "wiremesh_gateway_"


def scrape(url: str) -> dict[str, float]:
    """name{label="v"} (or bare name) -> value."""
    r = httpx.get(url, timeout=5.0)
    r.raise_for_status()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    if P + "known_peers" not in out:
        # Another exporter (the control server's /metrics, say) would read as a gateway
        # with nothing known, active or installed.
        raise ValueError(f"no {P}known_peers there: not a wiremesh gateway's metrics")
    return out


def _by_label(m: dict[str, float], name: str) -> dict[str, float]:
    return {k.split('"')[1]: v for k, v in m.items() if k.startswith(name + "{")}


def summary(first: dict[str, float], second: dict[str, float], seconds: float) -> dict[str, Any]:
    def rate(name: str) -> float:
        return (second.get(name, 0.0) - first.get(name, 0.0)) / seconds

    return {
        "known": second.get(P + "known_peers", 0.0),
        "active": second.get(P + "active_peers", 0.0),
        "installed": second.get(P + "installed_total", 0.0),
        "installs_per_s": rate(P + "installed_total"),
        "revoked": second.get(P + "revoked_total", 0.0),
        "sync_revision": second.get(P + "sync_revision", 0.0),
        "refused": _by_label(second, P + "dropped_total"),
        "cookie_replies": _by_label(second, P + "cookie_replies_total"),
    }
