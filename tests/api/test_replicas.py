"""Two server replicas over one database: a change made through one reaches the other's
netmaps (the server keeps no state of its own beyond caches)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx

from tests.api.test_api import pub
from tests.conftest import ApiEnv, serve
from wiremesh.agent.runner import next_netmap
from wiremesh.core.netmap import digest
from wiremesh.core.wire import (
    DeltaMessage,
    FullMessage,
    StreamMessage,
    open_line,
    parse_message,
)
from wiremesh.server.app import create_app
from wiremesh.wg.keys import generate_private_key, public_key_of


async def test_change_through_one_replica_reaches_the_other(api: ApiEnv) -> None:
    # On PostgreSQL, LISTEN/NOTIFY must carry the change: the poll is made too slow to.
    pg = api.db_url.startswith("postgresql")
    other = create_app(api.db_url, poll_interval=60.0 if pg else 0.1)
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other, client=("192.0.2.60", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://wm") as c2:
            key = (await api.client.post("/api/v1/setup-keys", json={
                "name": "k", "reusable": True}, headers=api.admin)).json()["key"]
            # Enrol through replica 1 only: replica 2 changes nothing itself, so only the
            # change notice (or its poll) can tell it.
            a = (await api.client.post("/api/v1/enroll", json={
                "setup_key": key, "public_key": pub(), "hostname": "a"})).json()
            await api.client.post("/api/v1/enroll", json={
                "setup_key": key, "public_key": pub(), "hostname": "b"})
            deadline = time.monotonic() + 10
            hub2 = other.state.hub
            while not (a["peer_id"] in hub2.current
                       and len(hub2.current[a["peer_id"]].peers) == 1):
                assert time.monotonic() < deadline, "replica 2 never saw replica 1's peers"
                await asyncio.sleep(0.05)
            # And the admin token issued at the first start works on both.
            r = await c2.get("/api/v1/peers", headers=api.admin)
            assert sorted(p["name"] for p in r.json()) == ["a", "b"]


def _lines(r: httpx.Response, peer_key: str, server_key: str) -> Iterator[StreamMessage]:
    for line in r.iter_lines():
        if line:
            yield parse_message(open_line(server_key, peer_key, line))


def test_resume_on_another_replica_is_a_delta(tmp_path) -> None:
    """An agent that followed replica 1 resumes on replica 2, which numbered its netmap
    differently, from the version it holds: a delta (its digest tells replica 2 what it
    holds), never a full map; a wrong digest gets the full map."""
    db, tokens = f"sqlite:///{tmp_path}/s.db", []
    one = create_app(db, on_admin_token=tokens.append, poll_interval=0.1)
    with serve(one) as url1, httpx.Client(base_url=url1, timeout=10.0) as c1:
        admin = {"Authorization": f"Bearer {tokens[0]}"}
        key = c1.post("/api/v1/setup-keys", json={"name": "k", "reusable": True},
                      headers=admin).json()["key"]
        private = generate_private_key()
        a = c1.post("/api/v1/enroll", json={"setup_key": key, "hostname": "a",
                                            "public_key": public_key_of(private)}).json()
        c1.post("/api/v1/enroll", json={"setup_key": key, "hostname": "b",
                                        "public_key": pub()})
        auth = {"Authorization": f"Bearer {a['token']}"}
        server_key, me = a["server_key"]["public_key"], public_key_of(private)
        held = None
        with c1.stream("GET", "/api/v1/agent/netmap", headers=auth) as r:
            for msg in _lines(r, me, server_key):
                held = next_netmap(held, msg) or held
                if held is not None and len(held.peers) == 1:
                    break
        assert held is not None
        # A change that alters no netmap: replica 2, started after it, numbers every
        # netmap with a later revision than replica 1 did.
        assert c1.post("/api/v1/groups", json={"name": "empty", "members": []},
                       headers=admin).status_code == 201
        two = create_app(db, poll_interval=0.1)
        with serve(two) as url2, httpx.Client(base_url=url2, timeout=10.0) as c2:
            hub2 = two.state.hub
            assert hub2.current[a["peer_id"]].version != held.version
            with c2.stream("GET", "/api/v1/agent/netmap", headers=auth, params={
                    "since": held.version, "digest": digest(held)}) as r:
                it = _lines(r, me, server_key)
                first = next(it)
                assert isinstance(first, DeltaMessage), first
                assert first.delta.from_version == held.version and first.delta.empty
                held = next_netmap(held, first)
                assert held is not None
                c1.post("/api/v1/enroll", json={"setup_key": key, "hostname": "c",
                                                "public_key": pub()})
                for msg in it:
                    assert not isinstance(msg, FullMessage)
                    held = next_netmap(held, msg) or held
                    if len(held.peers) == 2:
                        break
                assert held == replace(hub2.current[a["peer_id"]], version=held.version)
            with c2.stream("GET", "/api/v1/agent/netmap", headers=auth, params={
                    "since": 1, "digest": "0" * 32}) as r:
                assert isinstance(next(_lines(r, me, server_key)), FullMessage)
