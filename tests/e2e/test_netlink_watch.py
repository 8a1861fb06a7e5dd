"""AddressWatch in a namespace of its own: quiet while nothing changes, awake at once when an
address arrives (what makes endpoint discovery event-driven)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wiremesh.lab.netns import Lab, missing_requirements

pytestmark = pytest.mark.e2e

if missing := missing_requirements():
    pytest.skip(f"lab needs: {', '.join(missing)}", allow_module_level=True)

WATCH = """
import asyncio, subprocess, sys, time
from wiremesh.netlink.watch import AddressWatch

async def main():
    async with AddressWatch() as watch:
        await asyncio.sleep(0.2)  # bound before the change below
        print("quiet", await watch.wait(0.5), flush=True)
        started = time.monotonic()
        subprocess.run(["ip", "addr", "add", "192.0.2.77/24", "dev", sys.argv[1]], check=True)
        woke = await watch.wait(10)
        print("woke", woke, time.monotonic() - started < 5, flush=True)

asyncio.run(main())
"""


def test_an_address_change_wakes_the_watch() -> None:
    with Lab() as lab:
        net = lab.add_switch("u", "198.51.100.0/24")
        host = lab.add_host("h")
        lab.connect(host, net)
        ifname = next(iter(host.addresses))
        res = subprocess.run(host.cmd([sys.executable, "-c", WATCH, ifname]),
                             capture_output=True, text=True, timeout=60)
        assert res.stdout.split("\n")[:2] == ["quiet False", "woke True True"], res.stderr
