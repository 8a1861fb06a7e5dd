"""Endpoint discovery measures the NAT mapping with the STUN responder of the replica the
agent talks to now, trying the next address of a name with several after a miss."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from wiremesh.agent import discovery as discovery_mod
from wiremesh.agent.discovery import Discovery
from wiremesh.agent.state import AgentConfig
from wiremesh.core.stun import Mapped

STUN_PORT = 3478


class _Client:
    def __init__(self, server: str) -> None:
        self.server = server


class _Side:
    """A WireGuard port whose STUN requests only the live replicas answer."""

    def __init__(self, live: set[str]) -> None:
        self.live = live
        self.asked: list[tuple[str, int]] = []

    async def stun(self, server: tuple[str, int]) -> Mapped | None:
        self.asked.append(server)
        if server[0] in self.live:
            return Mapped("203.0.113.9", 40000)
        return None

    async def refresh(self) -> None:
        return None


def _config() -> AgentConfig:
    return AgentConfig("https://192.0.2.1:8443", 1, "a", "t", "100.64.0.1", 10, "wm0", 51820,
                       [], replicas=["https://192.0.2.2:8443"])


def _discovery(client: _Client, side: _Side, monkeypatch: pytest.MonkeyPatch) -> Discovery:
    monkeypatch.setattr(discovery_mod, "local_addresses", lambda _ifname: [])
    d = Discovery(client, _config(), side)  # type: ignore[arg-type]
    d.stun_port = STUN_PORT
    return d


def test_stun_goes_to_the_replica_in_use_not_the_first_one(monkeypatch) -> None:
    client, side = _Client("https://192.0.2.1:8443"), _Side(live={"192.0.2.2"})
    d = _discovery(client, side, monkeypatch)
    # The first replica died and the agent moved on to the second one.
    client.server = "https://192.0.2.2:8443"
    found = asyncio.run(d.candidates())
    assert side.asked == [("192.0.2.2", STUN_PORT)]
    assert found == [{"endpoint": "203.0.113.9:40000", "kind": "mapped"}]


def test_a_name_with_several_addresses_is_tried_address_by_address(monkeypatch) -> None:
    client, side = _Client("https://mesh.example:8443"), _Side(live={"198.51.100.2"})
    d = _discovery(client, side, monkeypatch)
    addresses = ["198.51.100.1", "198.51.100.2"]  # the first one's replica is down

    async def measure_twice() -> list[dict[str, str]]:
        async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
            assert host == "mesh.example"
            return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (a, port)) for a in addresses]
        asyncio.get_running_loop().getaddrinfo = getaddrinfo  # type: ignore[method-assign]
        first = await d.candidates()
        assert first == []  # no answer from the dead replica's address
        return await d.candidates()

    found = asyncio.run(measure_twice())
    assert side.asked == [("198.51.100.1", STUN_PORT), ("198.51.100.2", STUN_PORT)]
    assert found == [{"endpoint": "203.0.113.9:40000", "kind": "mapped"}]
    assert d.misses == 0
