"""Bearer-token authentication for admins and for enrolled peers."""

from __future__ import annotations

from fastapi import HTTPException, Request

from wiremesh.store.repo import Store
from wiremesh.store.tables import Peer


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


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
