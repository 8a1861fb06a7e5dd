"""`wiremesh relay`: the relay as a process of its own, next to (or far from) the server.

It holds no peer data. Peers authenticate with their usual bearer token; the relay asks the
server who that is and whom it may reach (token introspection, see `introspect`), using a
relay credential that the server's operator issued (`wiremesh server --relay-secret-file`),
so neither a peer nor anyone else can talk the relay into accepting a made-up identity or
destination list. Why introspection rather than tickets signed by the server: the answer is
the server's current netmap, so a revoked policy or a deleted peer reaches the relay within
one netmap refresh (the introspection is a long poll), with no ticket lifetime to wait out and
no signing key to distribute and rotate. The cost is that the relay sees peer tokens; it is
infrastructure the operator runs and lists (`wiremesh server --relay URL`), and agents only
use relays their server advertises, over verified TLS.

When the server is unreachable, connected peers keep the destinations last confirmed, and new
connections are refused until it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, WebSocket
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from wiremesh.relay.introspect import (
    MAX_TOKEN_LEN,
    PATH,
    IntrospectRequest,
    IntrospectResponse,
)
from wiremesh.relay.switch import RELAY_PATH, RelaySwitch
from wiremesh.server.auth import bearer_token
from wiremesh.wg.keys import decode_key, encode_key

log = logging.getLogger("wiremesh.relay")
WAIT_S = 15.0


class IntrospectionFailed(RuntimeError):
    """The server could not be asked, or would not answer: the token is neither valid nor
    invalid, as far as the relay knows."""


class CredentialRefused(IntrospectionFailed):
    """The server refused the relay's own credential (a wrong secret), or serves no
    standalone relays at all."""


_REFUSALS = {
    401: "refuses this relay secret (it is not the server's --relay-secret-file)",
    404: "introspects no tokens for relays (a wiremesh server started without "
         "--relay-secret-file?)",
}


class Introspector:
    """The relay's client of the server's introspection endpoint."""

    def __init__(self, server: str, secret: str, verify: ssl.SSLContext | bool = True) -> None:
        # One long poll per connected peer: no pool limit, or the 101st peer would wait.
        self.http = httpx.AsyncClient(
            base_url=server, verify=verify, headers={"Authorization": f"Bearer {secret}"},
            timeout=httpx.Timeout(10.0, read=WAIT_S + 10.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    async def ask(self, token: str, since: int = 0, wait: float = 0.0) -> IntrospectResponse:
        body = IntrospectRequest(token=token, since=since, wait=wait).model_dump()
        try:
            r = await self.http.post(PATH, json=body)
        except httpx.HTTPError as e:
            raise IntrospectionFailed(f"cannot reach the server at {self.http.base_url}: "
                                      f"{e or e.__class__.__name__}") from None
        if r.status_code in _REFUSALS:
            raise CredentialRefused(f"the server at {self.http.base_url} "
                                    f"{_REFUSALS[r.status_code]}")
        if r.status_code != 200:
            raise IntrospectionFailed(f"the server refused introspection (HTTP "
                                      f"{r.status_code}): {r.text.strip()[:200]}")
        try:
            return IntrospectResponse.model_validate_json(r.content)
        except ValidationError:  # --server names something that is not a wiremesh server
            raise IntrospectionFailed(f"the server at {self.http.base_url} answered "
                                      f"introspection with something else") from None

    async def check_credential(self) -> None:
        """Raise CredentialRefused if the server turns the relay's secret down (asking about
        a token no peer holds), IntrospectionFailed if it cannot be asked."""
        await self.ask("wm_relay_start-up_check")

    async def authenticate(self, token: str) -> RemoteGrant | None:
        """Raises IntrospectionFailed when the server cannot vouch either way: the peer
        then hears "try again later" (503), not that its token is bad (401)."""
        if len(token) > MAX_TOKEN_LEN:
            return None  # no peer holds one; the server would not even take the question
        got = await self.ask(token)
        if not got.active:
            return None
        return RemoteGrant(self, token, decode_key(got.public_key), got.name,
                           frozenset(got.allowed), got.version)

    async def close(self) -> None:
        await self.http.aclose()


@dataclass
class RemoteGrant:
    introspector: Introspector
    token: str
    key: bytes
    name: str
    allowed: frozenset[str]
    version: int

    def may_reach(self, dst: bytes) -> bool:
        return encode_key(dst) in self.allowed

    async def watch(self) -> None:
        backoff = 0.5
        while True:
            try:
                got = await self.introspector.ask(self.token, self.version, WAIT_S)
            except IntrospectionFailed as e:
                log.warning("%s: keeping its last known destinations: %s", self.name, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            if not got.active:
                return
            self.allowed, self.version = frozenset(got.allowed), got.version


def create_relay_app(server: str, secret: str, verify: ssl.SSLContext | bool = True) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        introspector = Introspector(server, secret, verify)
        app.state.relay = RelaySwitch(introspector)
        try:
            yield
        finally:
            await introspector.close()

    app = FastAPI(title="wiremesh relay", lifespan=lifespan, openapi_url=None)

    @app.websocket(RELAY_PATH)
    async def relay(ws: WebSocket) -> None:
        await app.state.relay.serve(ws, bearer_token(ws))

    @app.get("/healthz")
    async def healthz() -> dict[str, int]:
        return {"clients": len(app.state.relay.clients)}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
