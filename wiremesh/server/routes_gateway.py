"""The JIT gateway's feed: its known peers, paged, then what changed, by long poll.

Only peers enrolled with a `gateway` setup key may read it. A gateway syncs by reading
pages (keyset by peer id) and then asks for changes since the revision of the first page:
anything that moved while it paged comes again as a change, so the pages need not be one
snapshot. Every answer is signed with the server key for this gateway and this request
(core/wire.py `verify_feed`), like the netmap streams of agents.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel

from wiremesh.core.wire import FEED_SIGNATURE_HEADER
from wiremesh.server.auth import current_peer
from wiremesh.server.jsonbody import JsonRoute
from wiremesh.store import Store
from wiremesh.store.common import MAX_ID, MAX_REVISION
from wiremesh.store.tables import Peer

router = APIRouter(prefix="/api/v1/gateway", route_class=JsonRoute)
MAX_PAGE = 100_000
# How often a waiting long poll looks at the store's revision: a revoked peer reaches the
# gateways within about this much after the commit.
CHANGE_POLL_S = 0.05


class KnownPageOut(BaseModel):
    revision: int
    peers: list[tuple[int, str, str]]  # peer id, public key, overlay address
    next_after: int | None
    groups: list[str]  # admitted at `revision`: send them back as `held` with /changes


class KnownChangesOut(BaseModel):
    revision: int
    upsert: list[tuple[int, str, str]]
    remove: list[int]
    groups: list[str]
    reset: bool


def _signed(request: Request, gw: Peer, answer: dict[str, Any]) -> Response:
    """The answer as JSON, signed for this gateway and request target. Serialised here, not
    through the response model: a page holds 50,000 rows, and validating them all again on
    the way out cost more than reading them."""
    body = json.dumps(answer, separators=(",", ":")).encode()
    target = request.url.path.encode()
    if query := request.scope.get("query_string"):
        target += b"?" + query
    sig = request.app.state.hub.signer.sign_feed(gw.public_key, target, body)
    return Response(body, media_type="application/json", headers={FEED_SIGNATURE_HEADER: sig})


async def current_gateway(request: Request, peer: Peer = Depends(current_peer)) -> Peer:
    store: Store = request.app.state.store
    if not await store.gateways.is_gateway(peer):
        raise HTTPException(403, "this peer was not enrolled with a gateway setup key")
    return peer


@router.get("/known", response_model=KnownPageOut)
async def known(request: Request, after: int = Query(0, ge=0, le=MAX_ID),
                limit: int = Query(50_000, ge=1, le=MAX_PAGE),
                gw: Peer = Depends(current_gateway)) -> Response:
    """One page of the peers this gateway must know, by ascending peer id after `after`."""
    page = await request.app.state.store.gateways.known_page(gw.id, after, limit)
    return _signed(request, gw, {"revision": page.revision, "peers": page.peers,
                                 "next_after": page.next_after,
                                 "groups": sorted(page.groups)})


@router.get("/changes", response_model=KnownChangesOut)
async def changes(request: Request, since: int = Query(..., ge=0, le=MAX_REVISION),
                  wait: float = Query(20.0, ge=0, le=60, description="seconds to wait for one"),
                  held: list[str] | None = Query(
                      None, description="the groups the last answer named (repeat the "
                                        "parameter; one empty value for none): a policy "
                                        "change then comes as a delta instead of a reset"),
                  gw: Peer = Depends(current_gateway)) -> Response:
    """What changed in this gateway's known set since revision `since`; waits up to `wait`
    seconds for a change (an answer with `revision == since` means none came)."""
    store: Store = request.app.state.store
    groups = None if held is None else frozenset(g for g in held if g)
    deadline = time.monotonic() + wait
    while True:
        got = await store.gateways.changes(gw.id, since, groups)
        if got.revision != since or time.monotonic() >= deadline:
            return _signed(request, gw, {"revision": got.revision, "upsert": got.upsert,
                                         "remove": got.remove, "groups": sorted(got.groups),
                                         "reset": got.reset})
        await asyncio.sleep(CHANGE_POLL_S)
