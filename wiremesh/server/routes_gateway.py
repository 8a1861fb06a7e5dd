"""The JIT gateway's feed: its known peers, paged, then what changed, by long poll.

Only peers enrolled with a `gateway` setup key may read it. A gateway syncs by reading
pages (keyset by peer id) and then asks for changes since the revision of the first page:
anything that moved while it paged comes again as a change, so the pages need not be one
snapshot.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel

from wiremesh.server.auth import current_peer
from wiremesh.store import Store
from wiremesh.store.tables import Peer

router = APIRouter(prefix="/api/v1/gateway")
MAX_PAGE = 100_000
# How often a waiting long poll looks at the store's revision: a revoked peer reaches the
# gateways within about this much after the commit.
CHANGE_POLL_S = 0.05


class KnownPageOut(BaseModel):
    revision: int
    peers: list[tuple[int, str, str]]  # peer id, public key, overlay address
    next_after: int | None


class KnownChangesOut(BaseModel):
    revision: int
    upsert: list[tuple[int, str, str]]
    remove: list[int]
    reset: bool


async def current_gateway(request: Request, peer: Peer = Depends(current_peer)) -> Peer:
    store: Store = request.app.state.store
    if not await store.gateways.is_gateway(peer):
        raise HTTPException(403, "this peer was not enrolled with a gateway setup key")
    return peer


@router.get("/known", response_model=KnownPageOut)
async def known(request: Request, after: int = Query(0, ge=0),
                limit: int = Query(50_000, ge=1, le=MAX_PAGE),
                gw: Peer = Depends(current_gateway)) -> KnownPageOut:
    """One page of the peers this gateway must know, by ascending peer id after `after`."""
    page = await request.app.state.store.gateways.known_page(gw.id, after, limit)
    return KnownPageOut.model_construct(revision=page.revision, peers=page.peers,
                                        next_after=page.next_after)


@router.get("/changes", response_model=KnownChangesOut)
async def changes(request: Request, since: int = Query(..., ge=0),
                  wait: float = Query(20.0, ge=0, le=60, description="seconds to wait for one"),
                  gw: Peer = Depends(current_gateway)) -> KnownChangesOut:
    """What changed in this gateway's known set since revision `since`; waits up to `wait`
    seconds for a change (an answer with `revision == since` means none came)."""
    store: Store = request.app.state.store
    deadline = time.monotonic() + wait
    while True:
        got = await store.gateways.changes(gw.id, since)
        if got.revision != since or time.monotonic() >= deadline:
            return KnownChangesOut.model_construct(revision=got.revision, upsert=got.upsert,
                                                   remove=got.remove, reset=got.reset)
        await asyncio.sleep(CHANGE_POLL_S)
