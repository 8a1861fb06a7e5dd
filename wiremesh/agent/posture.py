"""What the agent tells the server about this machine for posture checks: its own version
and the OS family (core/posture.py)."""

from __future__ import annotations

import platform
from functools import cache
from importlib.metadata import PackageNotFoundError, version

# platform.system() -> core/posture.py's OS families.
_FAMILIES = {"linux": "linux", "darwin": "macos", "windows": "windows", "freebsd": "freebsd"}


@cache
def posture_report() -> dict[str, str]:
    try:
        agent_version = version("wiremesh")
    except PackageNotFoundError:  # running from a source tree that was never installed
        agent_version = "0"
    return {"agent_version": agent_version,
            "os_family": _FAMILIES.get(platform.system().lower(), "other")}
