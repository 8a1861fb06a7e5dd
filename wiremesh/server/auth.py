"""Bearer-token authentication for admins and for enrolled peers."""

from __future__ import annotations

from fastapi import HTTPException, Request
from starlette.requests import HTTPConnection

from wiremesh.store import Store
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


READS = {"GET", "HEAD", "OPTIONS"}


async def admin_actor(request: Request) -> str:
    """The acting admin token's name for the audit log; an auditor token may only read."""
    store: Store = request.app.state.store
    row = await store.admin_tokens.for_token(_bearer(request))
    if row is None:
        raise HTTPException(401, "invalid admin token (unknown or revoked)",
                            headers={"WWW-Authenticate": "Bearer"})
    if row.role != "admin" and request.method not in READS:
        raise HTTPException(403, f"admin token {row.name!r} has the read-only role "
                            f"{row.role!r}: it may not {request.method} {request.url.path}")
    return f"admin:{row.name}"


async def current_peer(request: Request) -> Peer:
    store: Store = request.app.state.store
    peer = await store.peers.for_token(_bearer(request))
    if peer is None:
        raise HTTPException(401, "invalid peer credential (was this peer deleted?)",
                            headers={"WWW-Authenticate": "Bearer"})
    return peer
