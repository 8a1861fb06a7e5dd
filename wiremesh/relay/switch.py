"""The relay's switch: one WebSocket per connected peer, frames forwarded by destination key.

Who a peer is and whom it may reach come from an `Authority` (the server's own hub when the
relay is embedded, the server's introspection endpoint when it runs on its own); the switch
trusts nothing the peer says about itself. A frame is forwarded only to a connected peer that
is in the sender's netmap; everything else is dropped and counted by outcome, and no input
can end the relay (only the sender's own connection, when its socket fails).

Each client has a bounded send queue, so one slow receiver drops its own packets (WireGuard
and TCP inside recover) instead of stalling the senders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from wiremesh.core.relayframe import BadFrame, unpack
from wiremesh.relay import metrics

log = logging.getLogger("wiremesh.relay")
RELAY_PATH = "/api/v1/relay"  # the same on the server (embedded) and on a standalone relay
QUEUE_FRAMES = 1024
CLOSE_REPLACED = 4000  # the same peer connected again; the older connection goes
CLOSE_REVOKED = 4001  # the peer's credential is no longer valid (peer deleted)
RETRY_AFTER_S = 5  # when credentials cannot be checked: the server is down or refuses us
# While they cannot be checked, one log line this often: a line per attempt let anyone with a
# bearer token (any text) fill the log.
UNCHECKED_LOG_S = 10.0


class Grant(Protocol):
    """What the server says about one connected peer."""

    key: bytes  # the peer's WireGuard public key, raw
    name: str

    def may_reach(self, dst: bytes) -> bool:
        """True while `dst` is in this peer's current netmap."""
        ...

    async def watch(self) -> None:
        """Return when the credential stops being valid."""
        ...


class Authority(Protocol):
    async def authenticate(self, token: str) -> Grant | None:
        """The grant of the peer holding `token`, None when it holds none; raises when the
        token cannot be checked (the peer then gets 503, not 401)."""
        ...


# uvicorn's websockets-sansio protocol (0.54) logs "ASGI callable returned without completing
# handshake." at ERROR after every denial response, although the client got it: anyone could
# fill the log with refused handshakes. Those of our own denials are dropped; any other stays.
# Upstream: https://github.com/Kludex/uvicorn/pull/3138 (remove this once it is released).
_UVICORN_NO_HANDSHAKE = "ASGI callable returned without completing handshake."
_denied: ContextVar[bool] = ContextVar("relay_denied", default=False)


class _DenialNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # The server logs it in the connection's task, after the app returned in it, so
        # the flag set while denying is visible here and in no other connection.
        return not (_denied.get() and record.getMessage() == _UVICORN_NO_HANDSHAKE)


def _quiet_uvicorn_denials() -> None:
    server_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DenialNoise) for f in server_log.filters):
        server_log.addFilter(_DenialNoise())


async def _deny(ws: WebSocket, response: JSONResponse) -> None:
    _denied.set(True)
    await ws.send_denial_response(response)


@dataclass(eq=False)
class _Client:
    ws: WebSocket
    grant: Grant
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE_FRAMES))
    replaced: asyncio.Event = field(default_factory=asyncio.Event)


class RelaySwitch:
    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        _quiet_uvicorn_denials()
        self.clients: dict[bytes, _Client] = {}
        self.counts: Counter[str] = Counter()  # outcome -> frames (plus "refused" connections)
        self._unchecked = 0  # connections refused unchecked since the last log line
        self._unchecked_logged = -UNCHECKED_LOG_S

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        metrics.FRAME_OUTCOMES[outcome].inc()

    async def serve(self, ws: WebSocket, token: str | None) -> None:
        """Run one peer's connection until it closes, fails or is revoked."""
        try:
            grant = await self.authority.authenticate(token) if token else None
        except Exception as e:  # the store or the server failed us, not the peer
            self._unchecked += 1
            now = time.monotonic()
            if now - self._unchecked_logged >= UNCHECKED_LOG_S:
                log.error("relay: cannot check peers' credentials (%d refused since the last "
                          "such line): %r", self._unchecked, e)
                self._unchecked, self._unchecked_logged = 0, now
            await _deny(ws, JSONResponse(
                {"detail": "the relay cannot check credentials right now"}, status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S)}))
            return
        if grant is None:
            self.counts["refused"] += 1
            metrics.REFUSED.inc()
            await _deny(ws, JSONResponse(
                {"detail": "an enrolled peer's bearer token is required"}, status_code=401,
                headers={"WWW-Authenticate": "Bearer"}))
            return
        await ws.accept()
        me = _Client(ws, grant)
        old = self.clients.get(grant.key)
        self.clients[grant.key] = me
        if old is not None:
            old.replaced.set()
        metrics.CLIENTS.set(len(self.clients))
        log.info("relay: %s connected", grant.name)
        reason = await self._run(me)
        if self.clients.get(grant.key) is me:
            del self.clients[grant.key]
        metrics.CLIENTS.set(len(self.clients))
        log.info("relay: %s left (%s)", grant.name, reason)

    async def _run(self, me: _Client) -> str:
        jobs: dict[asyncio.Task, str] = {
            asyncio.create_task(self._read(me)): "closed",
            asyncio.create_task(_write(me)): "send failed",
            asyncio.create_task(me.grant.watch()): "credential revoked",
            asyncio.create_task(me.replaced.wait()): "replaced by a new connection",
        }
        done, pending = await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        first = done.pop()
        reason = jobs[first]
        if not first.cancelled() and first.exception() is not None:
            reason = f"{reason}: {first.exception()!r}"
        code = {"credential revoked": CLOSE_REVOKED,
                "replaced by a new connection": CLOSE_REPLACED}.get(jobs[first], 1000)
        with contextlib.suppress(Exception):  # the socket may be gone already
            await me.ws.close(code)
        return reason

    async def _read(self, me: _Client) -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                msg = await me.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                data = msg.get("bytes")
                if data is None:
                    self._count("malformed")  # text frames carry nothing we use
                else:
                    self.forward(me, data)

    def forward(self, me: _Client, frame: bytes) -> None:
        try:
            dst, packet = unpack(frame)
        except BadFrame:
            self._count("malformed")
            return
        if not me.grant.may_reach(dst):
            self._count("unauthorised")
            return
        to = self.clients.get(dst)
        if to is None:
            self._count("no_destination")
            return
        try:
            to.queue.put_nowait(me.grant.key + packet)
        except asyncio.QueueFull:
            self._count("congested")
            return
        self._count("forwarded")
        metrics.BYTES.inc(len(packet))


async def _write(me: _Client) -> None:
    while True:
        await me.ws.send_bytes(await me.queue.get())
