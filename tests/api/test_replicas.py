"""Two server replicas over one database: a change made through one reaches the other's
netmaps (the server keeps no state of its own beyond caches)."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.api.test_api import pub
from tests.conftest import ApiEnv
from wiremesh.server.app import create_app


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
