"""Agent API: enrolment, endpoint reports and the netmap stream (NDJSON, one message a
line; the messages are defined in core/wire.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from functools import partial
from time import monotonic

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from wiremesh.core.ipam import OVERLAY_NET
from wiremesh.core.wire import (
    BadMessage,
    DeletedMessage,
    FullMessage,
    Netmap,
    PingMessage,
    StreamMessage,
    check_peer_endpoint,
    encode_message,
    endpoint_host_port,
)
from wiremesh.server import metrics
from wiremesh.server.admission import Opening, Openings
from wiremesh.server.auth import current_peer, streaming_peer
from wiremesh.server.errors import problem
from wiremesh.server.hub import KEEPALIVE_S, TICK_S, NetmapHub
from wiremesh.server.jsonbody import JsonRoute
from wiremesh.server.schemas import (
    EndpointAnswer,
    EndpointReport,
    EnrollRequest,
    EnrollResponse,
    PathsReport,
    ServerKeyOut,
)
from wiremesh.store.enrolment import NewPeer
from wiremesh.store.tables import Peer

router = APIRouter(prefix="/api/v1", route_class=JsonRoute)


def _client_address(request: Request) -> str | None:
    """The address the request came from, when it is one peers can be sent to. It is not
    always: behind a proxy it is what X-Forwarded-For says, a link-local client is
    `fe80::1%eth0`, an agent on the server's host or behind a proxy there comes from
    loopback, one through the mesh from its overlay address. Such an address is skipped
    (the report itself stands): kept, it would be sent to every other peer as this one's
    endpoint."""
    host = request.client.host if request.client else None
    try:
        return None if host is None else check_peer_endpoint(host)
    except ValueError:
        return None


def _observed(request: Request, endpoints: list[str]) -> list[str]:
    """Reported endpoints plus the address the request came from (first-hop reflexive)."""
    out = list(endpoints)
    host = _client_address(request)
    if host and host not in {endpoint_host_port(e)[0] for e in out}:
        out.append(host)
    return out


@router.post("/enroll", status_code=201, response_model=EnrollResponse)
async def enroll(body: EnrollRequest, request: Request) -> EnrollResponse:
    signer = request.app.state.hub.signer
    got = await request.app.state.enrolments.submit(NewPeer(
        body.setup_key, body.public_key, body.hostname, body.listen_port,
        _observed(request, body.endpoints),
        proven=body.proof is not None and signer.proves(body.public_key, body.setup_key,
                                                        body.proof)))
    metrics.ENROLMENTS.inc()
    request.app.state.hub.poke()
    return EnrollResponse(peer_id=got.peer.id, name=got.peer.name,
                          overlay_ip=got.peer.overlay_ip,
                          overlay_prefix_len=OVERLAY_NET.prefixlen, token=got.token,
                          note=got.note, server_key=_server_key(request))


def _server_key(request: Request) -> ServerKeyOut:
    signer = request.app.state.hub.signer
    return ServerKeyOut(public_key=signer.public_key, fingerprint=signer.fingerprint,
                        stream_key=signer.stream_key, stream_key_sig=signer.stream_key_sig)


@router.get("/server-key", response_model=ServerKeyOut)
async def server_key(request: Request) -> ServerKeyOut:
    """The key netmap streams are signed with. Agents check it against the fingerprint they
    were given before they send a setup key, and pin it."""
    return _server_key(request)


@router.put("/agent/endpoints", response_model=EndpointAnswer)
async def report_endpoints(body: EndpointReport, request: Request,
                           peer: Peer = Depends(current_peer)) -> EndpointAnswer:
    """The agent's candidates; the answer says where the server sees it from and where to
    measure its NAT mapping (STUN)."""
    changed = await request.app.state.store.peers.report_endpoints(
        peer.id, _observed(request, body.ordered()), body.listen_port, body.agent_version,
        body.os_family)
    if changed:
        request.app.state.hub.poke()
    return EndpointAnswer(observed=_client_address(request),
                          stun_port=request.app.state.stun_port)


@router.put("/agent/paths", status_code=204)
async def report_paths(body: PathsReport, request: Request,
                       peer: Peer = Depends(current_peer)) -> None:
    """How this agent reaches each of its peers (direct or relayed, endpoint, last
    handshake); kept in memory for `peers list` on this replica, never in the store."""
    request.app.state.paths[peer.id] = body.peers


# Stream lines are written in pieces of at most one TLS record: a bigger write (a full map is
# ~100 KB at 10,000 peers) leaves the connection's TLS buffers that big for as long as it
# lives: 250 KB per stream instead of 80 KB, measured over 1,000 uvloop TLS streams.
WRITE_SLICE = 16 * 1024


def _slices(line: bytes) -> Iterator[bytes]:
    return (line[i:i + WRITE_SLICE] for i in range(0, len(line), WRITE_SLICE))


async def _stream(hub: NetmapHub, peer_id: int, public_key: str, since: int,
                  held: str | None, opening: Opening, mac: bool = False,
                  ) -> AsyncIterator[bytes]:
    """Every line is signed for this peer (`public_key`), or carries a MAC under the key
    only this peer shares with us (`mac`), so no other peer can replay it."""
    seal_body = partial(hub.signer.seal_mac if mac else hub.signer.seal, public_key)

    def seal(msg: StreamMessage) -> bytes:
        return seal_body(encode_message(msg))

    ev = hub.subscribe(peer_id)
    metrics.STREAMS.inc()
    try:
        if hub.netmap(peer_id) is None:
            # Enrolled a moment ago (here or through another replica): the next coalesced
            # refresh brings its netmap and wakes us.
            hub.poke()
            await ev.wait()
        sent: Netmap | None = hub.base_for(peer_id, since, held) if since else None
        ping: tuple[int, bytes] | None = None  # the last keepalive line, reused while current
        # The hub revision at which the store last said the peer exists: a netmap still
        # missing is asked about again only after a refresh, not at every keepalive (a
        # burst of enrolments at thousands of streams held every pooled connection so).
        checked = -1
        # When the last line was sent (monotonic). A stream that carried a delta within the
        # keepalive interval skips the keepalive: during an enrolment storm nearly every
        # version changes at every refresh, and a fresh signature per stream per keepalive
        # was 7 % of the server's CPU at 10,000 streams. The agent's read timeout (45 s)
        # still sees a line at least every 2 intervals; an idle stream keeps its keepalive
        # at every timer round (one tick of margin for the timer's drift).
        last_line = -KEEPALIVE_S
        while True:
            # Cleared before reading: a change landing while a message is being sent (the
            # yield below) must wake the next wait, not wait for the keepalive 15 s later.
            ev.clear()
            cur = hub.netmap(peer_id)
            if cur is None:
                if checked != hub.revision:
                    checked = hub.revision
                    if not await hub.peer_exists(peer_id):
                        yield seal(DeletedMessage.model_construct(peer_id=peer_id,
                                                                  public_key=public_key))
                        return
                # Not gone, only late (enrolled a moment ago, here or through another
                # replica, and not compiled yet): its netmap comes with a coming refresh.
                hub.poke()
                yield seal(PingMessage.model_construct(version=sent.version if sent else 0))
            elif sent is None:
                last_line = monotonic()
                for part in _slices(seal(FullMessage.model_construct(netmap=cur))):
                    yield part
                metrics.PUSHES.labels("full").inc()
                sent = cur
            elif sent.version < cur.version:
                last_line = monotonic()
                for part in _slices(seal_body(hub.delta(peer_id, sent, cur))):
                    yield part
                metrics.PUSHES.labels("delta").inc()
                sent = cur
            elif monotonic() - last_line >= KEEPALIVE_S - TICK_S:
                # The agent holds what we hold (under its own number, after a resume from
                # another replica: then `sent` is ahead of `cur`).
                if ping is None or ping[0] != sent.version:
                    ping = (sent.version, seal(PingMessage.model_construct(
                        version=sent.version)))
                last_line = monotonic()
                yield ping[1]
            opening.done()
            # Woken by a change to this peer's netmap, or by the hub's keepalive timer.
            await ev.wait()
    finally:
        opening.done()
        hub.unsubscribe(peer_id, ev)
        metrics.STREAMS.dec()


@router.get("/agent/netmap", response_model=None)
async def netmap_stream(
    request: Request,
    since: int = Query(0, ge=0, description="netmap version the agent holds (0 = none)"),
    digest: str | None = Query(
        None, pattern="^[0-9a-f]{32}$",
        description="digest of the netmap the agent holds (core.netmap.digest): lets a "
                    "replica that does not know `since` resume with a delta"),
    mac: bool = Query(False, description="authenticate lines with the MAC key agreed with "
                                         "the server's stream key (see /server-key) instead "
                                         "of a signature each"),
) -> StreamingResponse | JSONResponse:
    hub = request.app.state.hub
    # Admitted before the credential is checked, so a refused opening costs no lookup.
    opening = await request.app.state.openings.take()
    if opening is None:
        return problem(503, "Busy", "too many netmap streams opening at once; retry later",
                       headers={"Retry-After": Openings.retry_after()})
    try:
        peer_id, public_key = await streaming_peer(request)
        if mac:
            hub.signer.mac_key(public_key)
    except BadMessage as e:
        opening.done()
        return problem(400, "No stream key", f"{e}; open the stream without mac=1")
    except BaseException:
        opening.done()
        raise
    return StreamingResponse(
        _stream(hub, peer_id, public_key, since, digest, opening, mac),
        media_type="application/x-ndjson", headers={"Cache-Control": "no-store"})
