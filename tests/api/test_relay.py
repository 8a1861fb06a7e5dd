"""The relay over real WebSockets (uvicorn on loopback), embedded in the server and standalone:
who may connect, whom a peer may reach, what happens to garbage, and the agent's RelayLink
carrying UDP between two loopback sockets standing in for wireguard-go."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import serve
from wiremesh.agent.relay_link import RelayLink, relay_urls
from wiremesh.relay.standalone import create_relay_app
from wiremesh.relay.switch import CLOSE_REVOKED, RelaySwitch
from wiremesh.server.app import create_app
from wiremesh.wg.keys import decode_key, generate_private_key, public_key_of

POLICY = """
groups:
  ab: [a, b]
policies:
  - name: ab
    sources: [ab]
    destinations: [ab]
"""
SECRET = "relay-secret-for-tests"


@dataclass
class Peer:
    name: str
    key: str
    token: str

    @property
    def raw(self) -> bytes:
        return decode_key(self.key)


@dataclass
class RelayEnv:
    url: str  # ws:// URL of the relay under test
    server: str
    http: httpx.Client
    admin: dict[str, str]
    switch: RelaySwitch
    peers: dict[str, Peer]


def wg_packet(tag: bytes = b"") -> bytes:
    """Something shaped like a WireGuard transport message (type 4, reserved zero)."""
    return b"\x04\0\0\0" + os.urandom(12) + tag.ljust(16, b".")


def poll(pred, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


async def apoll(pred, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture(params=["embedded", "standalone"])
def env(request: pytest.FixtureRequest, tmp_path) -> Iterator[RelayEnv]:
    tokens: list[str] = []
    app = create_app(f"sqlite:///{tmp_path}/s.db", on_admin_token=tokens.append,
                     poll_interval=0.2, relay_secret=SECRET)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serve(app))
        http = stack.enter_context(httpx.Client(base_url=server, timeout=10.0))
        admin = {"Authorization": f"Bearer {tokens[0]}"}
        key = http.post("/api/v1/setup-keys", json={"name": "k", "reusable": True},
                        headers=admin).json()["key"]
        peers = {}
        for name in ("a", "b", "c"):
            pub = public_key_of(generate_private_key())
            r = http.post("/api/v1/enroll", json={"setup_key": key, "hostname": name,
                                                  "public_key": pub})
            assert r.status_code == 201, r.text
            peers[name] = Peer(name, pub, r.json()["token"])
        r = http.post("/api/v1/policy/apply", json={"text": POLICY}, headers=admin)
        assert r.status_code == 200, r.text
        hub = app.state.hub

        def settled() -> bool:
            cur = {nm.name: nm for nm in hub.current.values()}
            return (set(cur) == {"a", "b", "c"} and peers["b"].key in cur["a"].peers
                    and not cur["c"].peers)

        poll(settled, "netmaps after the policy")
        if request.param == "embedded":
            switch, url = app.state.relay, relay_urls(server, ["/api/v1/relay"])[0]
        else:
            relay_app = create_relay_app(server, SECRET)
            base = stack.enter_context(serve(relay_app))
            switch, url = relay_app.state.relay, relay_urls(base, ["/api/v1/relay"])[0]
        yield RelayEnv(url, server, http, admin, switch, peers)


def dial(env: RelayEnv, peer: Peer | None, token: str | None = None):
    headers = {"Authorization": f"Bearer {token or peer.token}"} if (peer or token) else {}
    return connect(env.url, additional_headers=headers, open_timeout=5)


async def recv(ws: ClientConnection, timeout: float = 5.0) -> bytes:
    msg = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(msg, bytes)
    return msg


async def test_refuses_clients_without_a_peer_credential(env: RelayEnv) -> None:
    for token in (None, "wm_peer_not-a-real-token", SECRET):
        with pytest.raises(InvalidStatus) as e:
            async with dial(env, None, token):
                pass
        assert e.value.response.status_code == 401
    assert env.switch.counts["refused"] == 3 and not env.switch.clients


async def test_forwards_between_allowed_peers(env: RelayEnv) -> None:
    a, b = env.peers["a"], env.peers["b"]
    async with dial(env, a) as wa, dial(env, b) as wb:
        await apoll(lambda: len(env.switch.clients) == 2, "both peers connected")
        pkt = wg_packet(b"a-to-b")
        await wa.send(b.raw + pkt)
        assert await recv(wb) == a.raw + pkt
        back = wg_packet(b"b-to-a")
        await wb.send(a.raw + back)
        assert await recv(wa) == b.raw + back
    assert env.switch.counts["forwarded"] == 2


async def test_peer_without_policy_cannot_reach_b(env: RelayEnv) -> None:
    a, b, c = env.peers["a"], env.peers["b"], env.peers["c"]
    async with dial(env, a) as wa, dial(env, b) as wb, dial(env, c) as wc:
        await apoll(lambda: len(env.switch.clients) == 3, "three peers connected")
        await wc.send(b.raw + wg_packet(b"c-to-b"))
        await apoll(lambda: env.switch.counts["unauthorised"] == 1, "the drop to be counted")
        # What b gets next is a's packet: c's never arrived.
        pkt = wg_packet(b"a-to-b")
        await wa.send(b.raw + pkt)
        assert await recv(wb) == a.raw + pkt
    assert env.switch.counts["forwarded"] == 1


async def test_malformed_frames_are_dropped_and_counted(env: RelayEnv) -> None:
    a, b = env.peers["a"], env.peers["b"]
    bad = [
        b"short",                                   # no key
        b.raw + b"\x04\0\0\0",                      # packet shorter than any WireGuard message
        b.raw + b"\x07\0\0\0" + bytes(28),          # not a WireGuard type
        b.raw + b"\x04\1\0\0" + bytes(28),          # reserved bytes set
        b.raw + b"\x04\0\0\0" + bytes(65536),       # larger than a UDP datagram
    ]
    async with dial(env, a) as wa, dial(env, b) as wb:
        await apoll(lambda: len(env.switch.clients) == 2, "both peers connected")
        for frame in bad:
            await wa.send(frame)
        await wa.send("text frames carry nothing")
        await apoll(lambda: env.switch.counts["malformed"] == 6, "six malformed frames")
        pkt = wg_packet(b"still-alive")
        await wa.send(b.raw + pkt)
        assert await recv(wb) == a.raw + pkt


async def test_deleted_peer_is_disconnected(env: RelayEnv) -> None:
    a = env.peers["a"]
    async with dial(env, a) as wa:
        await apoll(lambda: len(env.switch.clients) == 1, "a connected")
        r = await asyncio.to_thread(env.http.delete, "/api/v1/peers/a", headers=env.admin)
        assert r.status_code in (200, 204), r.text
        with pytest.raises(ConnectionClosed) as e:
            await asyncio.wait_for(wa.recv(), 20)
        assert e.value.rcvd is not None and e.value.rcvd.code == CLOSE_REVOKED


class FakeWireGuard:
    """A UDP socket on loopback where wireguard-go would listen."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5.0)
        self.port = self.sock.getsockname()[1]

    def send(self, packet: bytes, endpoint: str) -> None:
        host, port = endpoint.rsplit(":", 1)
        self.sock.sendto(packet, (host, int(port)))

    async def recv(self) -> tuple[bytes, str]:
        data, addr = await asyncio.to_thread(self.sock.recvfrom, 70000)
        return data, f"{addr[0]}:{addr[1]}"


def dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"ws://127.0.0.1:{s.getsockname()[1]}/api/v1/relay"


async def test_relay_link_skips_a_dead_relay_and_carries_udp(env: RelayEnv) -> None:
    a, b = env.peers["a"], env.peers["b"]
    wg_a, wg_b = FakeWireGuard(), FakeWireGuard()
    relays = [dead_url(), env.url]
    link_a = RelayLink(relays, a.token, wg_a.port, connect_timeout=2)
    link_b = RelayLink(relays, b.token, wg_b.port, connect_timeout=2)
    tasks = [asyncio.create_task(link_a.run()), asyncio.create_task(link_b.run())]
    try:
        await apoll(lambda: link_a.relay_in_use == env.url == link_b.relay_in_use,
                    "both links on the live relay")
        await apoll(lambda: len(env.switch.clients) == 2, "relay to see both links")
        pkt = wg_packet(b"over-relay")
        wg_a.send(pkt, link_a.endpoint(b.key))
        got, src = await wg_b.recv()
        # b's wireguard-go sees a's packet coming from a's loopback socket on b's side.
        assert got == pkt and src == link_b.endpoint(a.key)
        reply = wg_packet(b"reply")
        wg_b.send(reply, src)
        got, src = await wg_a.recv()
        assert got == reply and src == link_a.endpoint(b.key)
        assert link_a.stats.to_relay_packets == 1 and link_a.stats.from_relay_packets == 1
        assert link_b.stats.to_relay_bytes == len(reply)
        # Only wireguard-go's port may send through the link.
        stranger = FakeWireGuard()
        stranger.send(wg_packet(b"stranger"), link_a.endpoint(b.key))
        wg_a.send(wg_packet(b"marker"), link_a.endpoint(b.key))
        got, _ = await wg_b.recv()
        assert got.endswith(b"marker".ljust(16, b"."))
    finally:
        for link in (link_a, link_b):
            await link.close()
        await asyncio.gather(*tasks)


async def test_relay_link_moves_to_the_next_relay_and_back(tmp_path) -> None:
    """Two embedded relays of two servers over one database: when the first one goes away,
    the link finds the second; when the first comes back, the link returns to it (peers meet
    only on the same relay, and every agent prefers the first)."""
    tokens: list[str] = []
    db = f"sqlite:///{tmp_path}/s.db"
    first = create_app(db, on_admin_token=tokens.append, poll_interval=0.2)
    second = create_app(db, on_admin_token=tokens.append, poll_interval=0.2)

    def on(url: str) -> bool:
        return link.relay_in_use == relay_urls(url, ["/api/v1/relay"])[0]

    with serve(second) as url2:
        with serve(first) as url1, httpx.Client(base_url=url1, timeout=10.0) as http:
            admin = {"Authorization": f"Bearer {tokens[0]}"}
            key = http.post("/api/v1/setup-keys", json={"name": "k"}, headers=admin).json()
            r = http.post("/api/v1/enroll", json={
                "setup_key": key["key"], "hostname": "a",
                "public_key": public_key_of(generate_private_key())})
            link = RelayLink(relay_urls(url1, ["/api/v1/relay"]) +
                             relay_urls(url2, ["/api/v1/relay"]),
                             r.json()["token"], FakeWireGuard().port, connect_timeout=2,
                             prefer_after=0.3)
            task = asyncio.create_task(link.run())
            await apoll(lambda: on(url1), "the link on the first relay")
        await apoll(lambda: on(url2), "the link on the second relay", timeout=30)
        port1 = int(url1.rsplit(":", 1)[1])
        with serve(create_app(db, poll_interval=0.2), port=port1):
            await apoll(lambda: on(url1), "the link back on the first relay", timeout=30)
        await link.close()
        await task


def test_introspection_needs_the_relay_credential(env: RelayEnv) -> None:
    body = {"token": env.peers["a"].token}
    r = env.http.post("/api/v1/relay/introspect", json=body,
                      headers={"Authorization": f"Bearer {env.peers['a'].token}"})
    assert r.status_code == 401
    r = env.http.post("/api/v1/relay/introspect", json=body,
                      headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 200 and r.json()["public_key"] == env.peers["a"].key
    assert env.peers["b"].key in r.json()["allowed"]
    r = env.http.post("/api/v1/relay/introspect", json={"token": "nope", "wait": 99},
                      headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 422 and "wait" in r.text


@pytest.mark.parametrize(("embedded", "standalone", "advertised"), [
    (True, [], ("/api/v1/relay",)),
    (True, ["wss://r1.example:8443/api/v1/relay"],
     ("wss://r1.example:8443/api/v1/relay", "/api/v1/relay")),
    (False, ["wss://r1.example:8443/api/v1/relay"], ("wss://r1.example:8443/api/v1/relay",)),
])
async def test_netmaps_advertise_the_relays(tmp_path, embedded: bool, standalone: list[str],
                                            advertised: tuple[str, ...]) -> None:
    tokens: list[str] = []
    app = create_app(f"sqlite:///{tmp_path}/s.db", on_admin_token=tokens.append,
                     relay=embedded, relays=standalone)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://wm") as c:
            key = (await c.post("/api/v1/setup-keys", json={"name": "k"}, headers={
                "Authorization": f"Bearer {tokens[0]}"})).json()["key"]
            r = await c.post("/api/v1/enroll", json={
                "setup_key": key, "hostname": "a",
                "public_key": public_key_of(generate_private_key())})
            assert r.status_code == 201, r.text
            await app.state.hub.refresh()
            nm = app.state.hub.current[r.json()["peer_id"]]
            assert nm.relays == advertised
            assert (app.state.relay is not None) == embedded


async def test_no_relay_means_no_relay_endpoint(tmp_path) -> None:
    app = create_app(f"sqlite:///{tmp_path}/s.db", relay=False)
    with serve(app) as url:
        with pytest.raises(InvalidStatus) as e:
            async with connect(relay_urls(url, ["/api/v1/relay"])[0], open_timeout=5):
                pass
        assert e.value.response.status_code in (403, 404)


async def test_a_failing_authority_answers_503_and_the_relay_goes_on() -> None:
    class Broken:
        async def authenticate(self, token: str) -> None:
            raise OSError("database is gone")

    app = FastAPI()
    switch = RelaySwitch(Broken())

    @app.websocket("/api/v1/relay")
    async def relay(ws: WebSocket) -> None:
        await switch.serve(ws, "some-token")

    with serve(app) as url:
        for _ in range(2):
            with pytest.raises(InvalidStatus) as e:
                async with connect(relay_urls(url, ["/api/v1/relay"])[0], open_timeout=5):
                    pass
            assert e.value.response.status_code == 503
