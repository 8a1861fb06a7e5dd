"""The agent's side of the stream: which lines it accepts (signed with the pinned server key,
for this peer, valid) and what each message does to the netmap it holds."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from wiremesh.agent import state as statefile
from wiremesh.agent.client import PeerDeleted
from wiremesh.agent.discovery import Discovery
from wiremesh.agent.runner import Agent, ResyncNeeded, next_netmap
from wiremesh.agent.state import AgentConfig, AgentState
from wiremesh.core import wire
from wiremesh.core.wire import (
    BadMessage,
    DeletedMessage,
    DeltaMessage,
    FullMessage,
    Netmap,
    NetmapPeer,
    PingMessage,
    Signer,
    agent_mac_key,
    encode_message,
    open_line,
    parse_message,
    verify_stream_key,
)
from wiremesh.server.hub import delta_body
from wiremesh.wg.keys import generate_private_key, public_key_of, write_private_key

KEY = base64.b64encode(bytes([7]) * 32).decode()
A = Netmap(version=3, peer_id=1, name="a", overlay_ip="100.64.0.1")
P = NetmapPeer(KEY, "b", "100.64.0.2", ("192.0.2.2:51820",))
B = Netmap(version=5, peer_id=1, name="a", overlay_ip="100.64.0.1", peers={P.public_key: P})
SERVER = Signer(Signer.generate())


def test_full_replaces_what_is_held() -> None:
    msg = parse_message(encode_message(FullMessage(netmap=B)))
    assert next_netmap(None, msg) == B
    assert next_netmap(A, msg) == B


def test_delta_applies_only_to_its_base() -> None:
    msg = parse_message(open_line(SERVER.public_key, KEY, SERVER.seal(KEY, delta_body(A, B))))
    assert isinstance(msg, DeltaMessage)
    assert next_netmap(A, msg) == B
    with pytest.raises(ResyncNeeded):
        next_netmap(B, msg)
    with pytest.raises(ResyncNeeded):
        next_netmap(None, msg)


def test_keepalive_changes_nothing_and_deletion_stops() -> None:
    assert next_netmap(A, PingMessage(version=3)) is None
    with pytest.raises(PeerDeleted):
        next_netmap(A, DeletedMessage(peer_id=1, public_key=KEY))


class _Plane:
    """Records what the agent would write to WireGuard and nftables."""

    def __init__(self) -> None:
        self.applied: list[Netmap] = []

    def apply(self, netmap: Netmap) -> None:
        self.applied.append(netmap)

    def next_due(self) -> None:
        return None


class _Client:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    async def report_endpoints(self, listen_port: int, endpoints: list[str],
                               candidates: list) -> dict:
        return {}

    async def netmap_stream(self, since: int, digest: str | None = None, mac: bool = False):
        self.mac = mac
        for line in self.lines:
            yield line


def _agent(tmp_path, stream_key: str | None = None) -> tuple[Agent, _Plane]:
    private = generate_private_key()
    write_private_key(statefile.private_key_path(tmp_path), private)
    cfg = AgentConfig("https://192.0.2.1:8443", 1, "a", "t", "100.64.0.1", 10, "wm0", 51820, [],
                      server_key=SERVER.public_key, server_stream_key=stream_key)
    statefile.save(tmp_path, AgentState(cfg, A))
    agent = Agent(tmp_path)
    assert agent.public_key == public_key_of(private)
    plane = _Plane()
    agent.dataplane = plane  # type: ignore[assignment]
    return agent, plane


def _follow(agent: Agent, lines: list[bytes | str], caplog, mac: bool = False) -> list[str]:
    """Run the agent over `lines`; the refusals it logged. `mac`: whether the agent asked
    for lines with a MAC."""
    text = [x.decode() if isinstance(x, bytes) else x for x in lines]
    client = _Client(text)
    discovery = Discovery(client, agent.state.config, None)  # type: ignore[arg-type]
    with caplog.at_level("ERROR", logger="wiremesh.agent"):
        asyncio.run(agent._follow(client, discovery))  # type: ignore[arg-type]
    assert client.mac == mac
    return [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]


def test_invalid_messages_are_ignored_and_the_held_netmap_stays(tmp_path, caplog) -> None:
    agent, plane = _agent(tmp_path)
    good = encode_message(FullMessage(netmap=B))
    hostile = json.loads(good)
    hostile["netmap"]["peers"][0]["name"] = "b\nremove=true"
    bad_endpoint = json.loads(good)
    bad_endpoint["netmap"]["peers"][0]["endpoints"] = ["192.0.2.2:\u0665\u0661\u0668\u0662\u0660"]
    seal = lambda body: SERVER.seal(agent.public_key, body)  # noqa: E731
    lines = [seal(b"{not json"), seal(json.dumps(hostile).encode()),
             seal(json.dumps(bad_endpoint).encode()),
             seal(b'{"type": "delta", "delta": {"from_version": 3}}'), seal(good)]
    refused = _follow(agent, lines, caplog)
    assert plane.applied == [B]  # only the valid message reached the data plane
    assert statefile.load(tmp_path).netmap == B
    assert len(refused) == 4
    assert "name" in refused[1] and "endpoints" in refused[2]


def test_a_netmap_not_signed_by_the_pinned_key_is_refused(tmp_path, caplog) -> None:
    agent, plane = _agent(tmp_path)
    body = encode_message(FullMessage(netmap=B))
    impostor = Signer(Signer.generate())
    other_peer = public_key_of(generate_private_key())
    sig_ok = SERVER.seal(agent.public_key, body)
    tampered = sig_ok.replace(b'"name":"b"', b'"name":"x"')
    assert tampered != sig_ok
    lines = [
        body,  # unsigned
        impostor.seal(agent.public_key, body),  # another server's key
        SERVER.seal(other_peer, body),  # signed for another peer: a replay
        tampered,
        SERVER.seal(agent.public_key, encode_message(FullMessage(  # names another peer id
            netmap=Netmap(version=9, peer_id=2, name="z", overlay_ip="100.64.0.9")))),
        SERVER.seal(agent.public_key, encode_message(DeletedMessage(  # someone else's deletion
            peer_id=2, public_key=other_peer))),
    ]
    refused = _follow(agent, lines, caplog)
    assert plane.applied == [] and statefile.load(tmp_path).netmap == A
    assert len(refused) == 6
    assert "not a signed stream line" in refused[0]
    assert all("does not verify" in r for r in refused[1:4])
    assert "another peer" in refused[4] and "another peer" in refused[5]


def test_a_signed_deletion_naming_this_peer_stops_the_agent(tmp_path, caplog) -> None:
    agent, _ = _agent(tmp_path)
    line = SERVER.seal(agent.public_key, encode_message(DeletedMessage(
        peer_id=1, public_key=agent.public_key)))
    with pytest.raises(PeerDeleted):
        _follow(agent, [line], caplog)


def test_with_a_stream_key_lines_carry_a_mac_only_this_peer_and_the_server_share(
        tmp_path, caplog) -> None:
    """An agent that pinned the server's stream key asks for MAC'd lines and accepts only
    those made with the key it agreed with the server (or lines signed by the pinned key);
    a MAC for another peer, a forged stream key's, or a tampered line changes nothing."""
    verify_stream_key(SERVER.public_key, SERVER.stream_key, SERVER.stream_key_sig)
    agent, plane = _agent(tmp_path, SERVER.stream_key)
    other_peer = public_key_of(generate_private_key())
    impostor = Signer(Signer.generate())
    full = encode_message(FullMessage(netmap=A))
    good = SERVER.seal_mac(agent.public_key, encode_message(FullMessage(netmap=B)))
    lines = [
        SERVER.seal_mac(other_peer, full),  # another peer's MAC key
        impostor.seal_mac(agent.public_key, full),  # agreed with another stream key
        good.replace(b'"name":"b"', b'"name":"x"'),  # tampered
        good,
        SERVER.seal(agent.public_key, encode_message(FullMessage(netmap=A))),  # signed: fine
    ]
    refused = _follow(agent, lines, caplog, mac=True)
    assert plane.applied == [B, A]
    assert len(refused) == 3 and all("MAC does not verify" in r for r in refused)


def test_a_mac_line_without_an_agreed_key_is_refused(tmp_path, caplog) -> None:
    agent, plane = _agent(tmp_path)
    refused = _follow(agent, [SERVER.seal_mac(agent.public_key,
                                              encode_message(FullMessage(netmap=B)))], caplog)
    assert plane.applied == [] and "agreed on no MAC key" in refused[0]


def test_a_stream_key_is_accepted_only_under_the_pinned_keys_signature() -> None:
    impostor = Signer(Signer.generate())
    with pytest.raises(BadMessage, match="not signed by the server key"):
        verify_stream_key(SERVER.public_key, impostor.stream_key, SERVER.stream_key_sig)
    with pytest.raises(BadMessage, match="not signed by the server key"):
        verify_stream_key(SERVER.public_key, impostor.stream_key, impostor.stream_key_sig)
    with pytest.raises(BadMessage):
        verify_stream_key(SERVER.public_key, SERVER.stream_key, "not base64!")


def test_the_server_holds_the_mac_keys_of_the_peers_it_served_last(monkeypatch) -> None:
    # The cache was cleared whole when full: a busy server then agreed a key with every
    # peer at once. Now the least recently used goes alone.
    server = Signer(Signer.generate(), mac_keys_held=2)
    agreed: list[str] = []
    real = wire._mac_key
    monkeypatch.setattr(wire, "_mac_key", lambda own, other, *rest: (
        agreed.append(base64.b64encode(other).decode()), real(own, other, *rest))[1])
    own = generate_private_key()
    a, b, c = public_key_of(own), *(public_key_of(generate_private_key()) for _ in range(2))
    for key in (a, b, a, c, a, b):  # c pushes out b, the least recently used, not a
        server.mac_key(key)
    assert agreed == [a, b, c, b]
    assert server.mac_key(a) == agent_mac_key(own, server.stream_key)


def test_a_low_order_peer_key_agrees_on_no_mac_key() -> None:
    zero = base64.b64encode(bytes(32)).decode()
    with pytest.raises(BadMessage, match="no stream key"):
        SERVER.mac_key(zero)
