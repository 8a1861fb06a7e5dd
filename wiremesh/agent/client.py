"""The agent's side of the control-plane HTTP API (httpx)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from wiremesh.agent.connection import Trust
from wiremesh.agent.posture import posture_report

# A stream idle longer than three server keepalives is dead (NAT dropped it, server gone).
STREAM_READ_TIMEOUT = 45.0


class ServerRefused(RuntimeError):
    """The server answered with an error that retrying will not fix."""


class ServerBusy(ServerRefused):
    """The server sheds load (HTTP 503): try again after `retry_after` seconds, or another
    replica."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PeerDeleted(RuntimeError):
    pass


class CredentialsRefused(ServerRefused):
    """The server does not know this peer's token (HTTP 401). Not proof that the peer was
    deleted: a server restored from an old backup or started on an empty database says the
    same, so the agent keeps its mesh and asks again."""


def _problem(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and (body.get("detail") or body.get("title")):
        return str(body.get("detail") or body.get("title"))
    return " ".join(r.text.split())[:200] or f"HTTP {r.status_code}"


def _object(r: httpx.Response) -> dict[str, Any]:
    """The JSON object a successful answer carries; anything else (a proxy's page, some
    other server at that URL) is refused naming what came."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ServerRefused(f"{r.request.method} {r.request.url} answered HTTP "
                            f"{r.status_code} with no JSON object "
                            f"({r.headers.get('content-type', 'no content type')}): "
                            "is it a wiremesh server?")
    return body


async def server_key(server: str, trust: Trust, timeout: float = 15.0) -> dict[str, Any]:
    """The key the server signs netmap streams with: {"public_key", "fingerprint"}."""
    async with httpx.AsyncClient(base_url=server, timeout=timeout, verify=trust.verify()) as c:
        r = await c.get("/api/v1/server-key")
    if r.status_code != 200:
        raise ServerRefused(f"server key refused ({r.status_code}): {_problem(r)}")
    return _object(r)


async def enroll(server: str, body: dict[str, Any], trust: Trust,
                 timeout: float = 15.0) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server, timeout=timeout, verify=trust.verify()) as c:
        r = await c.post("/api/v1/enroll", json=body)
    if r.status_code != 201:
        raise ServerRefused(f"enrolment refused ({r.status_code}): {_problem(r)}")
    return _object(r)


def _retry_after(r: httpx.Response) -> float:
    try:
        return min(max(float(r.headers.get("retry-after", "")), 0.0), 60.0)
    except ValueError:
        return 1.0
async def device_login(server: str, trust: Trust, hostname: str,
                       show: Callable[[dict[str, Any]], None],
                       timeout: float = 15.0) -> dict[str, Any]:
    """`wiremesh up --login`: the server starts a device login at its OpenID provider,
    `show` tells the person where to go and which code to enter, and we poll until they
    have logged in. Returns the server's answer: a one-off setup key for this machine as
    the user's peer, and the server's key fingerprint."""
    async with httpx.AsyncClient(base_url=server, timeout=timeout, verify=trust.verify()) as c:
        r = await c.post("/auth/device", json={"hostname": hostname})
        if r.status_code != 200:
            raise ServerRefused(f"device login refused ({r.status_code}): {_problem(r)}")
        start = _object(r)
        show(start)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(start.get("expires_in", 600))
        interval = float(start.get("interval", 5))
        while loop.time() < deadline:
            await asyncio.sleep(interval)
            r = await c.post("/auth/device/poll", json={"login_id": start["login_id"]})
            if r.status_code != 200:
                raise ServerRefused(f"device login failed ({r.status_code}): {_problem(r)}")
            answer = _object(r)
            if answer.get("status") == "ok":
                return answer
            interval = float(answer.get("interval", interval))
    raise ServerRefused("the device login expired before anyone logged in: run it again")


class ServerClient:
    """Talks to one server URL at a time; `next_server` moves on to the next replica."""

    def __init__(self, servers: list[str], token: str, trust: Trust) -> None:
        self.servers, self.token, self.trust = servers, token, trust
        self.server = servers[0]
        self.http = self._new()

    async def next_server(self) -> None:
        """Use the next replica (in turn) from now on; no-op with a single URL."""
        if len(self.servers) > 1:
            self.server = self.servers[(self.servers.index(self.server) + 1)
                                       % len(self.servers)]
            await self.reset()

    def _new(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.server, headers={"Authorization": f"Bearer {self.token}"},
            verify=self.trust.verify(), timeout=httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT),
        )

    async def reset(self) -> None:
        """Drop every connection: this machine changed networks, and a request on a
        connection through the old one would hang until its timeout. An open netmap stream
        ends with an error, and is opened again."""
        old, self.http = self.http, self._new()
        with contextlib.suppress(httpx.HTTPError, OSError, TimeoutError):
            await asyncio.wait_for(old.aclose(), 2.0)

    async def close(self) -> None:
        await self.http.aclose()

    def _check(self, r: httpx.Response) -> None:
        if r.status_code == 401:
            raise CredentialsRefused(f"server refuses this peer's token: {_problem(r)}")
        if r.status_code == 503:
            raise ServerBusy(f"server busy: {_problem(r)}", _retry_after(r))
        if r.status_code >= 400:
            raise ServerRefused(f"server answered {r.status_code}: {_problem(r)}")

    async def report_endpoints(self, listen_port: int, endpoints: list[str],
                               candidates: list[dict[str, str]]) -> dict[str, Any]:
        """Report this agent's candidates; the answer names the server's STUN port."""
        r = await self.http.put("/api/v1/agent/endpoints",
                                json={"listen_port": listen_port, "endpoints": endpoints,
                                      "candidates": candidates, **posture_report()})
        self._check(r)
        return _object(r)

    async def report_paths(self, peers: list[dict[str, Any]]) -> None:
        """How this agent reaches each peer (direct or relayed), for `peers list`."""
        self._check(await self.http.put("/api/v1/agent/paths", json={"peers": peers}))

    async def netmap_stream(self, since: int, digest: str | None = None,
                            mac: bool = False) -> AsyncIterator[str]:
        """The stream's lines as they come; the caller validates each one. `digest` (of the
        netmap at `since`) lets a replica that never numbered it resume with a delta; `mac`
        asks for lines with a MAC instead of a signature each."""
        params: dict[str, str | int] = {"since": since}
        if digest is not None:
            params["digest"] = digest
        if mac:
            params["mac"] = 1
        async with self.http.stream("GET", "/api/v1/agent/netmap", params=params) as r:
            if r.status_code >= 400:
                await r.aread()
                self._check(r)
            async for line in r.aiter_lines():
                if line.strip():
                    yield line
