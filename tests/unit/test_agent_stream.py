from __future__ import annotations

import base64

import pytest

from wiremesh.agent.client import PeerDeleted
from wiremesh.agent.runner import ResyncNeeded, next_netmap
from wiremesh.core.wire import (
    DeletedMessage,
    FullMessage,
    Netmap,
    NetmapPeer,
    PingMessage,
    parse_message,
)
from wiremesh.server.hub import delta_message, encode

KEY = base64.b64encode(bytes([7]) * 32).decode()
A = Netmap(version=3, peer_id=1, name="a", overlay_ip="100.64.0.1")
P = NetmapPeer(KEY, "b", "100.64.0.2", ("192.0.2.2:51820",))
B = Netmap(version=5, peer_id=1, name="a", overlay_ip="100.64.0.1", peers={P.public_key: P})


def test_full_replaces_what_is_held() -> None:
    msg = parse_message(encode(FullMessage(netmap=B)))
    assert next_netmap(None, msg) == B
    assert next_netmap(A, msg) == B


def test_delta_applies_only_to_its_base() -> None:
    msg = parse_message(delta_message(A, B))
    assert next_netmap(A, msg) == B
    with pytest.raises(ResyncNeeded):
        next_netmap(B, msg)
    with pytest.raises(ResyncNeeded):
        next_netmap(None, msg)


def test_keepalive_changes_nothing_and_deletion_stops() -> None:
    assert next_netmap(A, parse_message(encode(PingMessage(version=3)))) is None
    with pytest.raises(PeerDeleted):
        next_netmap(A, parse_message(encode(DeletedMessage(peer_id=1, public_key=KEY))))


class _Plane:
    """Records what the agent would write to WireGuard and nftables."""

    def __init__(self) -> None:
        self.applied: list[Netmap] = []

    def apply(self, netmap: Netmap) -> None:
        self.applied.append(netmap)

    def next_due(self) -> None:
        return None


class _Client:
    def __init__(self, lines: list[str | bytes]) -> None:
        self.lines = lines

    async def report_endpoints(self, listen_port: int, endpoints: list[str],
                               candidates: list) -> dict:
        return {}

    async def netmap_stream(self, since: int):
        for line in self.lines:
            yield line


def test_invalid_messages_are_ignored_and_the_held_netmap_stays(tmp_path, caplog) -> None:
    import asyncio
    import json

    from wiremesh.agent import state as statefile
    from wiremesh.agent.discovery import Discovery
    from wiremesh.agent.runner import Agent
    from wiremesh.agent.state import AgentConfig, AgentState

    cfg = AgentConfig("https://192.0.2.1:8443", 1, "a", "t", "100.64.0.1", 10, "wm0", 51820, [])
    statefile.save(tmp_path, AgentState(cfg, A))
    agent = Agent(tmp_path)
    plane = _Plane()
    agent.dataplane = plane  # type: ignore[assignment]
    good = encode(FullMessage(netmap=B)).decode()
    hostile = json.loads(good)
    hostile["netmap"]["peers"][0]["name"] = "b\nremove=true"
    bad_endpoint = json.loads(good)
    bad_endpoint["netmap"]["peers"][0]["endpoints"] = ["192.0.2.2:\u0665\u0661\u0668\u0662\u0660"]
    lines = ["{not json", json.dumps(hostile), json.dumps(bad_endpoint),
             '{"type": "delta", "delta": {"from_version": 3}}', good]
    with caplog.at_level("ERROR", logger="wiremesh.agent"):
        client = _Client(lines)
        asyncio.run(agent._follow(client, Discovery(client, cfg, None)))  # type: ignore[arg-type]
    assert plane.applied == [B]  # only the valid message reached the data plane
    assert statefile.load(tmp_path).netmap == B
    refused = [r.getMessage() for r in caplog.records if "invalid" in r.getMessage()]
    assert len(refused) == 4
    assert "name" in refused[1] and "endpoints" in refused[2]
