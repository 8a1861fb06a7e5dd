"""Bearer-token authentication for admins and for enrolled peers."""

from __future__ import annotations

from fastapi import HTTPException, Request
from starlette.requests import HTTPConnection

from wiremesh.store.repo import Store
from wiremesh.store.tables import Peer


def bearer_token(conn: HTTPConnection) -> str | None:
    """The bearer token of a request or WebSocket handshake, if it has one."""
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _bearer(request: Request) -> str:
    token = bearer_token(request)
    if token is None:
        raise HTTPException(401, "missing bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    return token


async def admin_actor(request: Request) -> str:
    store: Store = request.app.state.store
    actor = await store.admin_for_token(_bearer(request))
    if actor is None:
        raise HTTPException(401, "invalid admin token", headers={"WWW-Authenticate": "Bearer"})
    return actor


async def current_peer(request: Request) -> Peer:
    store: Store = request.app.state.store
    peer = await store.peer_for_token(_bearer(request))
    if peer is None:
        raise HTTPException(401, "invalid peer credential (was this peer deleted?)",
                            headers={"WWW-Authenticate": "Bearer"})
    return peer
