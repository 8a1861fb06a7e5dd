"""RouteManager's bookkeeping without a data plane: which peer carries which prefix."""

from __future__ import annotations

import base64

from wiremesh.agent.dataplane import desired_peers
from wiremesh.agent.routes import RouteManager
from wiremesh.core.failover import FailoverConfig
from wiremesh.core.wire import Netmap, NetmapPeer, RouteEntry

# Distinct canonical keys (the data plane refuses anything else).
A, B, GHOST = (base64.b64encode(bytes([i]) * 32).decode() for i in (1, 2, 3))
NET1, NET2 = "198.18.1.0/24", "198.18.2.0/24"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def netmap(routes: dict[str, RouteEntry], version: int = 1) -> Netmap:
    return Netmap(
        version=version, peer_id=1, name="client", overlay_ip="100.64.0.1",
        peers={A: NetmapPeer(A, "a", "100.64.0.2", ("192.0.2.2:51820",)),
               B: NetmapPeer(B, "b", "100.64.0.3")},
        routes=routes,
    )


async def test_prefixes_follow_the_active_router() -> None:
    clock = Clock()
    rm = RouteManager("wmtest0", FailoverConfig(first_answer_after=0.35), clock=clock)
    nm = netmap({
        "one": RouteEntry("one", NET1, ((GHOST, 1), (A, 10), (B, 20))),
        "two": RouteEntry("two", NET2, ((B, 10), (A, 20))),
    })
    async with rm.applying(nm):
        # A router the netmap has no peer for never holds a prefix.
        assert rm.routed_prefixes(A) == (NET1,)
        assert rm.routed_prefixes(B) == (NET2,)
        assert rm.routed_prefixes(GHOST) == ()
        peers = desired_peers(nm, rm.routed_prefixes)
        assert peers[A].allowed_ips == ("100.64.0.2/32", NET1)
        assert peers[B].allowed_ips == ("100.64.0.3/32", NET2)

    # A dies (probes unanswered past the deadline) while B answers.
    for key in (A, B):
        rm.machine.probe_sent(key, 0.0)
    rm.machine.probe_reply(B, 0.0, 0.01)
    rm.machine.tick(1.0)
    assert rm.routed_prefixes(B) == (NET1, NET2)
    assert rm.routed_prefixes(A) == ()
    assert rm.snapshot()["active"] == {NET1: B, NET2: B}

    clock.now = 2.0
    async with rm.applying(netmap({"two": RouteEntry("two", NET2, ((A, 10),))}, 2)):
        assert rm.routed_prefixes(A) == (NET2,)
        assert rm.routed_prefixes(B) == ()
    assert rm.snapshot()["health"] == {A: "down"}
