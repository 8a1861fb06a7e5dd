"""Packet forwarding on a router peer.

`/proc/sys/net` shows the network namespace of the process that opens it, so this switches
forwarding on for the namespace the agent runs in and nowhere else (in the lab: one router
host, never the machine running the lab).
"""

from __future__ import annotations

from pathlib import Path

_PROC_NET = Path("/proc/sys/net")
_KNOBS = {4: "ipv4/ip_forward", 6: "ipv6/conf/all/forwarding"}


def _knob(version: int) -> Path:
    if version not in _KNOBS:
        raise ValueError(f"ip version: must be 4 or 6, got {version!r}")
    return _PROC_NET / _KNOBS[version]


def set_forwarding(enabled: bool, version: int = 4) -> None:
    _knob(version).write_text("1\n" if enabled else "0\n")


def forwarding_enabled(version: int = 4) -> bool:
    return _knob(version).read_text().strip() == "1"
