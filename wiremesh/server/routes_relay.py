"""The embedded relay (WebSocket `/api/v1/relay`) and token introspection for standalone relays.

Embedded, the relay asks this server's hub directly: a peer is who its token says, and may
reach the peers of its current netmap (checked per frame, so a policy change applies at once).
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass

from fastapi import APIRouter, HTTPException, Request, WebSocket

from wiremesh.relay.introspect import PATH, IntrospectRequest, IntrospectResponse
from wiremesh.relay.switch import RELAY_PATH, RelaySwitch
from wiremesh.server.auth import bearer_token
from wiremesh.server.hub import NetmapHub
from wiremesh.server.jsonbody import JsonRoute
from wiremesh.store import Store
from wiremesh.wg.keys import decode_key, encode_key

ws_router = APIRouter()
router = APIRouter(route_class=JsonRoute)


@dataclass
class HubGrant:
    hub: NetmapHub
    peer_id: int
    key: bytes
    name: str

    def may_reach(self, dst: bytes) -> bool:
        nm = self.hub.netmap(self.peer_id)
        return nm is not None and encode_key(dst) in nm.peers

    async def watch(self) -> None:
        """Return once the peer's netmap vanishes (the peer was deleted). A peer enrolled a
        moment ago may have no netmap yet; that is not a revocation."""
        ev = self.hub.subscribe(self.peer_id)
        try:
            seen = False
            while True:
                present = self.hub.netmap(self.peer_id) is not None
                if seen and not present:
                    return
                seen = seen or present
                await ev.wait()
                ev.clear()
        finally:
            self.hub.unsubscribe(self.peer_id, ev)


@dataclass
class HubAuthority:
    store: Store
    hub: NetmapHub

    async def authenticate(self, token: str) -> HubGrant | None:
        peer = await self.store.peers.for_token(token)
        if peer is None:
            return None
        return HubGrant(self.hub, peer.id, decode_key(peer.public_key), peer.name)


@ws_router.websocket(RELAY_PATH)
async def relay(ws: WebSocket) -> None:
    switch: RelaySwitch = ws.app.state.relay
    await switch.serve(ws, bearer_token(ws))


async def _disconnect(request: Request) -> None:
    """Return when the client hangs up (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post(PATH, response_model=IntrospectResponse)
async def introspect(body: IntrospectRequest, request: Request) -> IntrospectResponse:
    """For standalone relays: who holds this peer token, and whom it may reach."""
    secret: str | None = request.app.state.relay_secret
    if secret is None:
        raise HTTPException(404, "this server serves no standalone relays "
                                 "(start it with --relay-secret-file)")
    given = bearer_token(request) or ""
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise HTTPException(401, "invalid relay credential",
                            headers={"WWW-Authenticate": "Bearer"})
    store: Store = request.app.state.store
    hub: NetmapHub = request.app.state.hub
    peer = await store.peers.for_token(body.token)
    if peer is None:
        return IntrospectResponse(active=False)
    nm = hub.netmap(peer.id)
    if body.wait and (nm.version if nm else 0) == body.since:
        ev = hub.subscribe(peer.id)
        # A relay that goes away ends its long poll at once, so shutdowns do not wait.
        waits = [asyncio.create_task(ev.wait()), asyncio.create_task(_disconnect(request))]
        try:
            await asyncio.wait(waits, timeout=body.wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hub.unsubscribe(peer.id, ev)
            for t in waits:
                t.cancel()
        nm = hub.netmap(peer.id)
        if nm is None and await store.peers.for_token(body.token) is None:
            return IntrospectResponse(active=False)  # deleted while we waited
    return IntrospectResponse(active=True, name=peer.name, public_key=peer.public_key,
                              version=nm.version if nm else 0,
                              allowed=sorted(nm.peers) if nm else [])
