"""The netmap stream over real HTTP (uvicorn on loopback): full map first, then deltas,
and resume from a version."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest

from tests.conftest import billion_laughs, serve
from wiremesh.core.wire import (
    BadMessage,
    DeltaMessage,
    FullMessage,
    Netmap,
    PingMessage,
    Signer,
    agent_mac_key,
    encode_message,
    fingerprint,
    open_line,
    parse_message,
    verify_stream_key,
)
from wiremesh.server import routes_agent
from wiremesh.server.admission import Openings
from wiremesh.server.app import create_app
from wiremesh.server.hub import delta_body
from wiremesh.server.routes_agent import _stream
from wiremesh.wg.keys import generate_private_key, public_key_of


@pytest.fixture
def live(tmp_path) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    tokens: list[str] = []
    app = create_app(f"sqlite:///{tmp_path}/s.db", on_admin_token=tokens.append,
                     poll_interval=0.2)
    with serve(app) as url, httpx.Client(base_url=url, timeout=httpx.Timeout(10.0)) as c:
        yield c, {"Authorization": f"Bearer {tokens[0]}"}


def enroll(c: httpx.Client, key: str, name: str) -> dict:
    r = c.post("/api/v1/enroll", json={"setup_key": key, "hostname": name,
                                       "public_key": public_key_of(generate_private_key()),
                                       "endpoints": ["192.0.2.7:51820"]})
    assert r.status_code == 201, r.text
    return r.json()


def first_peer(c: httpx.Client, admin: dict[str, str]) -> tuple[str, dict, dict[str, str]]:
    """A reusable setup key, peer `a` enrolled with it, and `a`'s credential header."""
    key = c.post("/api/v1/setup-keys", json={"name": "k", "reusable": True},
                 headers=admin).json()["key"]
    a = enroll(c, key, "a")
    return key, a, {"Authorization": f"Bearer {a['token']}"}


def messages(r: httpx.Response) -> Iterator[dict]:
    """The messages of a stream, without their signatures (test_stream_is_signed_for_the_peer
    checks those)."""
    for line in r.iter_lines():
        if line:
            msg = json.loads(line)["msg"]
            if msg["type"] != "ping":
                yield msg


def test_full_then_deltas_then_resume(live) -> None:
    c, admin = live
    key, a, auth = first_peer(c, admin)
    with c.stream("GET", "/api/v1/agent/netmap", headers=auth) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        it = messages(r)
        first = next(it)
        assert first["type"] == "full" and first["netmap"]["peers"] == []
        assert first["netmap"]["overlay_ip"] == a["overlay_ip"]
        v1 = first["netmap"]["version"]
        b = enroll(c, key, "b")
        d = next(it)
        assert d["type"] == "delta" and d["delta"]["from_version"] == v1
        assert [p["name"] for p in d["delta"]["upsert_peers"]] == ["b"]
        assert d["delta"]["upsert_peers"][0]["endpoints"][0] == "192.0.2.7:51820"
        # Allowed by the default policy, so b may open connections to a.
        assert d["delta"]["add_inbound"][0]["proto"] == "all"
        v2 = d["delta"]["to_version"]
        assert c.delete("/api/v1/peers/b", headers=admin).status_code == 204
        d2 = next(it)
        assert d2["delta"]["remove_peers"] and d2["delta"]["from_version"] == v2
    # Resuming from an older version we still know yields a delta, not a full map.
    with c.stream("GET", "/api/v1/agent/netmap", params={"since": v1}, headers=auth) as r:
        msg = next(messages(r))
        assert msg["type"] == "delta" and msg["delta"]["from_version"] == v1
    # Resuming from the current version: nothing to send but a keepalive.
    cur = d2["delta"]["to_version"]
    with c.stream("GET", "/api/v1/agent/netmap", params={"since": cur}, headers=auth) as r:
        first_line = json.loads(next(r.iter_lines()))["msg"]
        assert first_line == {"type": "ping", "version": cur}
    assert b["peer_id"] != a["peer_id"]


def test_deleted_peer_stream_ends(live) -> None:
    c, admin = live
    _, a, auth = first_peer(c, admin)
    with c.stream("GET", "/api/v1/agent/netmap", headers=auth) as r:
        it = messages(r)
        assert next(it)["type"] == "full"
        c.delete("/api/v1/peers/a", headers=admin)
        gone = next(it)
        assert gone["type"] == "deleted" and gone["peer_id"] == a["peer_id"]
    r = c.get("/api/v1/agent/netmap", headers=auth)
    assert r.status_code == 401


def test_streams_and_health_stay_responsive_while_a_hostile_policy_is_refused(live) -> None:
    c, admin = live
    key, _, auth = first_peer(c, admin)
    with c.stream("GET", "/api/v1/agent/netmap", headers=auth) as r, \
            ThreadPoolExecutor(1) as pool:
        it = messages(r)
        assert next(it)["type"] == "full"
        # 9**7 values once expanded: parsed on the event loop, it would hold every stream.
        hostile = pool.submit(httpx.post, c.base_url.join("/api/v1/policy/apply"), headers=admin,
                              json={"text": billion_laughs(7)}, timeout=120)
        # Each probe has its deadline; keep probing for as long as the file is in the works.
        while not hostile.done():
            assert c.get("/healthz", timeout=2).status_code == 200
        enroll(c, key, "b")
        started = time.monotonic()
        d = next(it)
        assert d["type"] == "delta" and time.monotonic() - started < 5
        refused = hostile.result()
    assert refused.status_code == 422
    assert "more than 100000 values once YAML aliases are expanded" in refused.json()["detail"]
    assert c.get("/api/v1/policy/export", headers=admin).text.count("name: default") == 1


class _Hub:
    """Just what the stream reads of the hub, so the test decides when a change lands."""

    def __init__(self, netmap: Netmap | None, exists: bool = True) -> None:
        self.current = {1: netmap} if netmap else {}
        self.waiters: set[asyncio.Event] = set()
        self.signer = SIGNER
        self.exists = exists
        self.pokes = 0
        self.asked = 0  # peer_exists calls
        self.revision = 0

    def netmap(self, peer_id: int) -> Netmap | None:
        return self.current.get(peer_id)

    def delta(self, _peer_id: int, old: Netmap, new: Netmap) -> bytes:
        return delta_body(old, new)

    async def peer_exists(self, _peer_id: int) -> bool:
        self.asked += 1
        return self.exists

    def poke(self) -> None:
        self.pokes += 1

    def subscribe(self, _peer_id: int) -> asyncio.Event:
        ev = asyncio.Event()
        self.waiters.add(ev)
        return ev

    def unsubscribe(self, _peer_id: int, ev: asyncio.Event) -> None:
        self.waiters.discard(ev)

    def publish(self, netmap: Netmap) -> None:
        self.current = {1: netmap}
        for ev in self.waiters:
            ev.set()


async def test_a_change_while_a_message_is_being_sent_is_not_lost() -> None:
    """The stream is suspended at its yield while the server writes a message; a change
    landing then must go out at once, not with the keepalive 15 s later (it did: the
    policy scenario's 15.5 s propagation)."""
    nm = Netmap(version=1, peer_id=1, name="a", overlay_ip="100.64.0.1")
    hub = _Hub(nm)
    stream = _stream(hub, 1, PEER_KEY, 0, None, Openings().admit())  # type: ignore[arg-type]
    try:
        assert _open(await anext(stream))["type"] == "full"
        hub.publish(replace(nm, version=2, name="b"))
        msg = _open(await asyncio.wait_for(anext(stream), 2.0))
        assert msg["type"] == "delta" and msg["delta"]["to_version"] == 2
    finally:
        await stream.aclose()


async def _settle() -> None:
    """Lets every ready task run until it waits again (no time passes)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_stream_that_just_carried_a_delta_skips_its_keepalive(monkeypatch) -> None:
    """A keepalive round finding a delta sent within the interval sends nothing (a signature
    per stream per round is wasted while an enrolment storm changes every version); an idle
    stream still gets its keepalive, naming the version it holds."""
    clock = [1000.0]
    monkeypatch.setattr(routes_agent, "monotonic", lambda: clock[0])
    nm = Netmap(version=1, peer_id=1, name="a", overlay_ip="100.64.0.1")
    hub = _Hub(nm)
    stream = _stream(hub, 1, PEER_KEY, 0, None, Openings().admit())  # type: ignore[arg-type]

    def keepalive_round() -> None:
        for ev in hub.waiters:
            ev.set()

    try:
        assert _open(await anext(stream))["type"] == "full"
        clock[0] += 5
        hub.publish(replace(nm, version=2, name="b"))
        assert _open(await anext(stream))["delta"]["to_version"] == 2
        nxt = asyncio.ensure_future(anext(stream))
        await _settle()  # the stream waits for its next wake-up
        clock[0] += 5
        keepalive_round()  # 5 s after the delta: nothing goes out
        await _settle()
        assert not nxt.done()
        hub.publish(replace(nm, version=3, name="c"))
        assert _open(await nxt)["delta"]["to_version"] == 3
        clock[0] += routes_agent.KEEPALIVE_S
        keepalive_round()
        assert _open(await anext(stream)) == {"type": "ping", "version": 3}
    finally:
        await stream.aclose()


SIGNER = Signer(Signer.generate())
PEER_KEY = public_key_of(generate_private_key())


def _open(line: bytes) -> dict:
    return json.loads(open_line(SIGNER.public_key, PEER_KEY, line))


async def test_a_late_netmap_is_not_a_deletion() -> None:
    """A peer whose netmap is not compiled yet (enrolled a moment ago, maybe through another
    replica) gets keepalives until it comes, never `deleted`, and the store is asked about it
    once per hub refresh, not at every keepalive; a peer gone from the store gets `deleted`,
    signed for it."""
    hub, gone_hub = _Hub(None), _Hub(None, exists=False)
    stream = _stream(hub, 1, PEER_KEY, 0, None, Openings().admit())  # type: ignore[arg-type]

    async def keepalive_timer() -> None:  # the hub's, faster
        while True:
            await asyncio.sleep(0.05)
            for ev in (*hub.waiters, *gone_hub.waiters):
                ev.set()

    timer = asyncio.create_task(keepalive_timer())
    try:
        for _ in range(3):
            assert _open(await anext(stream)) == {"type": "ping", "version": 0}
        assert hub.pokes >= 3 and hub.asked == 1
        hub.revision += 1  # a refresh that did not bring it
        assert _open(await anext(stream)) == {"type": "ping", "version": 0}
        assert hub.asked == 2
        hub.publish(Netmap(version=4, peer_id=1, name="a", overlay_ip="100.64.0.1"))
        assert _open(await anext(stream))["type"] == "full"
        gone = _stream(gone_hub, 1, PEER_KEY, 0, None,  # type: ignore[arg-type]
                       Openings().admit())
        assert _open(await anext(gone)) == {"type": "deleted", "peer_id": 1,
                                            "public_key": PEER_KEY}
    finally:
        timer.cancel()
        await stream.aclose()


def test_stream_is_signed_for_the_peer(live) -> None:
    c, admin = live
    made = c.post("/api/v1/setup-keys", json={"name": "k", "reusable": True}, headers=admin)
    identity = c.get("/api/v1/server-key").json()
    assert made.json()["server_fingerprint"] == identity["fingerprint"]
    assert identity["fingerprint"] == fingerprint(identity["public_key"])
    me = public_key_of(generate_private_key())
    a = c.post("/api/v1/enroll", json={"setup_key": made.json()["key"], "hostname": "a",
                                        "public_key": me}).json()
    assert a["server_key"] == identity
    with c.stream("GET", "/api/v1/agent/netmap",
                  headers={"Authorization": f"Bearer {a['token']}"}) as r:
        for line in filter(None, r.iter_lines()):
            msg = parse_message(open_line(identity["public_key"], me, line))
            if msg.type != "ping":  # keepalives may come first for a peer this new
                break
    assert isinstance(msg, FullMessage) and msg.netmap.peer_id == a["peer_id"]
    with pytest.raises(BadMessage):
        open_line(identity["public_key"], public_key_of(generate_private_key()), line)


def test_stream_with_mac_carries_lines_only_this_peer_can_check(live) -> None:
    """`mac=1`: every line carries a MAC under the key the agent agrees with the server's
    stream key (bound to the signing key); another peer's key does not open it."""
    c, admin = live
    identity = c.get("/api/v1/server-key").json()
    verify_stream_key(identity["public_key"], identity["stream_key"], identity["stream_key_sig"])
    key = c.post("/api/v1/setup-keys", json={"name": "k", "reusable": True},
                 headers=admin).json()["key"]
    private = generate_private_key()
    me = public_key_of(private)
    a = c.post("/api/v1/enroll", json={"setup_key": key, "hostname": "a",
                                        "public_key": me}).json()
    mine = agent_mac_key(private, identity["stream_key"])
    with c.stream("GET", "/api/v1/agent/netmap", params={"mac": 1},
                  headers={"Authorization": f"Bearer {a['token']}"}) as r:
        # Keepalives may come first while the netmap of a peer this new is compiled.
        for line in filter(None, r.iter_lines()):
            assert line.startswith('{"mac":"')
            msg = parse_message(open_line(identity["public_key"], me, line, mine))
            if msg.type != "ping":
                break
    assert isinstance(msg, FullMessage) and msg.netmap.peer_id == a["peer_id"]
    with pytest.raises(BadMessage):
        open_line(identity["public_key"], me, line)  # no key agreed: refused
    other = agent_mac_key(generate_private_key(), identity["stream_key"])
    with pytest.raises(BadMessage):
        open_line(identity["public_key"], me, line, other)


def test_lines_written_in_pieces_arrive_whole(live, monkeypatch) -> None:
    """Big lines go out in pieces (server memory per stream); each still arrives as one
    line that verifies."""
    monkeypatch.setattr(routes_agent, "WRITE_SLICE", 50)
    c, admin = live
    key, _, auth = first_peer(c, admin)
    enroll(c, key, "b")
    server_key = c.get("/api/v1/server-key").json()["public_key"]
    me = c.get("/api/v1/peers/a", headers=admin).json()["public_key"]
    with c.stream("GET", "/api/v1/agent/netmap", headers=auth) as r:
        lines = (parse_message(open_line(server_key, me, x)) for x in r.iter_lines() if x)
        full = next(m for m in lines if not isinstance(m, PingMessage))  # keepalives first?
        assert isinstance(full, FullMessage) and len(encode_message(full)) > 200
        assert [p.name for p in full.netmap.peers.values()] == ["b"]
        enroll(c, key, "c")
        delta = next(m for m in lines if isinstance(m, DeltaMessage))
        assert [p.name for p in delta.delta.upsert_peers] == ["c"]
