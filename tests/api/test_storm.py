"""A reconnect storm: every agent of a dead replica opens its netmap stream on the survivor at
once. Admission control lets some wait their turn and refuses what is past that (503 +
Retry-After), and the agents' own client and back-off bring them in over the next seconds;
meanwhile the survivor keeps serving the streams it held."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from tests.api.test_api import pub
from tests.conftest import serve
from wiremesh.agent.client import ServerBusy, ServerClient
from wiremesh.agent.connection import Trust
from wiremesh.agent.runner import BACKOFF_MIN, jittered, next_netmap
from wiremesh.core.wire import Netmap, open_line, parse_message
from wiremesh.server import routes_agent
from wiremesh.server.app import create_app
from wiremesh.wg.keys import generate_private_key, public_key_of

AGENTS = 30
OPENING_LIMIT = 3  # far below the storm (3 in progress, 3 waiting), so most first
# attempts are refused
DEADLINE_S = 90.0  # a bound for a loaded CI machine, not a speed goal (bench/scale.py)


class StormAgent:
    def __init__(self, url: str, enrolled: dict, private: str) -> None:
        self.public = public_key_of(private)
        self.server_key = enrolled["server_key"]["public_key"]
        self.client = ServerClient([url], enrolled["token"], Trust())
        self.held: Netmap | None = None
        self.opened = 0  # streams that got their first line
        self.busy = 0  # 503s taken
        self.updates = 0

    async def follow(self) -> None:
        """Hold the stream as the agent does: on 503, wait about Retry-After (jittered) and
        ask again; every line must verify against the pinned key."""
        while True:
            try:
                first = True
                async for line in self.client.netmap_stream(0):
                    msg = parse_message(open_line(self.server_key, self.public, line))
                    if first:
                        self.opened += 1
                        first = False
                    new = next_netmap(self.held, msg)
                    if new is not None:
                        self.held, self.updates = new, self.updates + 1
            except ServerBusy as e:
                self.busy += 1
                await asyncio.sleep(jittered(max(e.retry_after, BACKOFF_MIN)))


async def _until(pred, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not pred():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S:.0f} s: {what}"
        await asyncio.sleep(0.1)


def test_reconnect_storm_is_admitted_and_the_survivor_keeps_serving(tmp_path, monkeypatch,
                                                                   ) -> None:
    # Openings admitted then hold until others queue behind them: a server that finishes
    # each opening before the next client connects (a quick machine, or a slow one spacing
    # the clients out) would otherwise never use admission control at all.
    gate = threading.Event()
    gate.set()
    checked = routes_agent.streaming_peer

    async def gated(request):  # type: ignore[no-untyped-def]
        await asyncio.to_thread(gate.wait, DEADLINE_S)
        return await checked(request)

    monkeypatch.setattr(routes_agent, "streaming_peer", gated)
    tokens: list[str] = []
    app = create_app(f"sqlite:///{tmp_path}/s.db", on_admin_token=tokens.append,
                     poll_interval=0.1, max_openings=OPENING_LIMIT,
                     max_waiting=OPENING_LIMIT)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30.0) as c:
        admin = {"Authorization": f"Bearer {tokens[0]}"}
        key = c.post("/api/v1/setup-keys", json={"name": "k", "reusable": True},
                     headers=admin).json()["key"]
        agents = []
        for i in range(AGENTS):
            private = generate_private_key()
            got = c.post("/api/v1/enroll", json={"setup_key": key, "hostname": f"a{i}",
                                                 "public_key": public_key_of(private)})
            assert got.status_code == 201, got.text
            agents.append(StormAgent(url, got.json(), private))

        async def storm() -> None:
            held, rest = agents[0], agents[1:]
            tasks = [asyncio.create_task(held.follow())]
            try:
                await _until(lambda: held.held is not None and len(held.held.peers)
                             == AGENTS - 1, "the held stream's full map")
                gate.clear()
                tasks += [asyncio.create_task(a.follow()) for a in rest]
                await _until(lambda: app.state.openings.waited > 0,
                             "an opening to wait its turn")
                gate.set()
                # A change while the storm rages: a peer joins, so every netmap changes.
                async with httpx.AsyncClient(base_url=url, timeout=30.0) as ac:
                    r = await ac.post("/api/v1/enroll", json={
                        "setup_key": key, "hostname": "late", "public_key": pub()})
                    assert r.status_code == 201, r.text
                    await _until(lambda: held.held is not None
                                 and len(held.held.peers) == AGENTS,
                                 "the held stream to receive the change")
                    await _until(lambda: all(a.opened for a in rest),
                                 f"all {len(rest)} storming agents to be admitted "
                                 f"(admitted: {sum(1 for a in rest if a.opened)})")
                    health = await ac.get("/healthz")
                    assert health.json()["streams"] == AGENTS
                # The storm went through admission control (openings waited for a turn,
                # maybe some were refused: how many depends on how fast the clients come),
                # and nobody got in twice or lost the stream it held.
                openings = app.state.openings
                assert openings.waited > 0
                assert openings.refused == sum(a.busy for a in rest)
                assert [a.opened for a in agents] == [1] * AGENTS
                await _until(lambda: all(a.held is not None and len(a.held.peers) == AGENTS
                                         for a in agents), "every netmap to hold the change")
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for a in agents:
                    await a.client.close()

        asyncio.run(storm())
