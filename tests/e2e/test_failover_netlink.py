"""Kernel route sync and forwarding switch, run inside a throw-away lab namespace."""

from __future__ import annotations

import json
import sys

import pytest

from wiremesh.lab.netns import Lab, missing_requirements

pytestmark = pytest.mark.e2e

if missing := missing_requirements():
    pytest.skip(f"lab needs: {', '.join(missing)}", allow_module_level=True)

SYNC = """
import json, sys
from wiremesh.netlink.routes import LinkMissing, sync_device_routes
try:
    print(json.dumps(sync_device_routes(sys.argv[1], json.loads(sys.argv[2]))))
except LinkMissing as e:
    print(json.dumps({"missing": str(e)}))
"""

FORWARD = """
import sys
from wiremesh.netlink.sysctl import forwarding_enabled, set_forwarding
set_forwarding(sys.argv[1] == "on")
print(forwarding_enabled())
"""


def test_route_sync_adds_removes_and_leaves_other_routes_alone() -> None:
    with Lab() as lab:
        h = lab.add_host("h")
        dev = lab.name("d0")
        h.run(["ip", "link", "add", dev, "type", "bridge"])
        h.run(["ip", "link", "set", dev, "up"])
        h.run(["ip", "route", "add", "198.18.9.0/24", "dev", dev])  # someone else's route

        def sync(ifname: str, prefixes: list[str]):
            out = h.run([sys.executable, "-c", SYNC, ifname, json.dumps(prefixes)]).stdout
            return json.loads(out)

        def ours() -> set[str]:
            out = h.run(["ip", "-o", "route", "show", "proto", "77", "dev", dev]).stdout
            return {line.split()[0] for line in out.splitlines()}

        assert sync(dev, ["198.18.1.0/24", "198.18.2.0/24"]) == [
            ["198.18.1.0/24", "198.18.2.0/24"], []]
        assert ours() == {"198.18.1.0/24", "198.18.2.0/24"}
        assert sync(dev, ["198.18.2.0/24", "198.18.3.7/24"]) == [
            ["198.18.3.0/24"], ["198.18.1.0/24"]]
        assert ours() == {"198.18.2.0/24", "198.18.3.0/24"}
        assert sync(dev, ["198.18.2.0/24", "198.18.3.0/24"]) == [[], []]
        assert sync(dev, []) == [[], ["198.18.2.0/24", "198.18.3.0/24"]]
        assert ours() == set()
        assert "198.18.9.0/24" in h.run(["ip", "route", "show", "dev", dev]).stdout
        assert "missing" in sync(lab.name("nope"), ["198.18.1.0/24"])


def test_forwarding_is_per_namespace() -> None:
    with Lab() as lab:
        a, b = lab.add_host("a"), lab.add_host("b")
        assert a.run([sys.executable, "-c", FORWARD, "on"]).stdout.strip() == "True"
        assert b.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "0"
        assert a.run([sys.executable, "-c", FORWARD, "off"]).stdout.strip() == "False"
