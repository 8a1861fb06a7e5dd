"""The ASGI app: stateless over its store, so several replicas can share one database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wiremesh.core.wire import DEFAULT_MTU, DnsConfig, Signer
from wiremesh.relay.switch import RELAY_PATH, RelaySwitch
from wiremesh.server import (
    console,
    errors,
    metrics,
    routes_admin,
    routes_agent,
    routes_auth,
    routes_gateway,
    routes_policy,
    routes_relay,
    routes_tokens,
    routes_users,
)
from wiremesh.server.admission import MAX_OPENING, MAX_WAITING, Openings
from wiremesh.server.bodylimit import BodyLimit
from wiremesh.server.collector import Collector
from wiremesh.server.enrolment import EnrolmentQueue
from wiremesh.server.hub import NetmapHub
from wiremesh.server.links import add_links
from wiremesh.server.oidc import OidcClient, OidcConfig
from wiremesh.server.stun import start_stun
from wiremesh.server.usercheck import UserChecker
from wiremesh.store import Store
from wiremesh.store.db import make_engine, migrate


def create_app(db_url: str, on_admin_token: Callable[[str], None] | None = None,
               on_fingerprint: Callable[[str], None] | None = None,
               poll_interval: float = 1.0, relay: bool = True, relays: Sequence[str] = (),
               relay_secret: str | None = None,
               stun_listen: tuple[str, int] | None = None,
               dns: DnsConfig | None = None,
               mtu: int = DEFAULT_MTU,
               oidc: OidcConfig | None = None,
               max_openings: int = MAX_OPENING, max_waiting: int = MAX_WAITING) -> FastAPI:
    """`on_admin_token` receives the initial admin token when the store was empty;
    `on_fingerprint` the fingerprint of the key netmaps are signed with.

    `relay`: serve the embedded relay; `relays`: URLs of standalone relays to advertise to
    agents (before the embedded one); `relay_secret`: the credential standalone relays
    introspect peer tokens with (None: no standalone relay may ask); `stun_listen` (host,
    port): run the STUN responder agents measure their NAT mapping with; `dns`: the mesh
    domain and split-DNS zones every agent's resolver serves; `mtu`: the mesh-wide WireGuard
    interface MTU sent in every netmap; `oidc`: the OpenID provider users log in with (None:
    admin tokens and setup keys only); `max_openings`: netmap stream openings in progress
    past which more wait their turn, `max_waiting`: waiting ones past which more get 503
    (admission control, server/admission.py).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(db_url)
        await migrate(engine)
        store = Store(engine)
        store.enrolment.peer_login_ttl = oidc.peer_login_ttl if oidc else None
        token = await store.bootstrap()
        if token is not None and on_admin_token is not None:
            on_admin_token(token)
        # One signing key for every replica of the database: agents pin it at enrolment.
        signer = Signer(await store.signing_key(Signer.generate))
        if on_fingerprint is not None:
            on_fingerprint(signer.fingerprint)
        # Standalone relays first: every agent picks the first that works, so peers meet
        # on the same relay; the embedded one (a path on the server's URL) is the fallback.
        hub = NetmapHub(store.mesh, signer, [*relays, *([RELAY_PATH] if relay else [])], dns,
                        mtu)
        await hub.refresh()
        enrolments = EnrolmentQueue(store.enrolment)
        app.state.store, app.state.hub, app.state.enrolments = store, hub, enrolments
        app.state.openings = Openings(max_openings, max_waiting)
        app.state.relay = RelaySwitch(routes_relay.HubAuthority(store, hub)) if relay else None
        stun = await start_stun(*stun_listen) if stun_listen else None
        app.state.stun_port = stun_listen[1] if stun_listen else None
        checker = UserChecker(store.users, hub, app.state.oidc)
        collector = Collector(hub.idle_s)
        tasks = [asyncio.create_task(hub.run(poll_interval)),
                 asyncio.create_task(hub.keepalives()),
                 asyncio.create_task(enrolments.run()), asyncio.create_task(checker.run()),
                 asyncio.create_task(collector.run())]
        # Changes committed through other replicas wake the hub at once (PostgreSQL);
        # the revision poll stays as the fallback.
        stop_listening = await store.changes.listen(hub.poke)
        try:
            yield
        finally:
            await stop_listening()
            if stun is not None:
                stun.close()
            # Both loops stop at a safe point: never in the middle of a transaction.
            hub.stop()
            enrolments.stop()
            checker.stop()
            collector.stop()
            _, pending = await asyncio.wait(tasks, timeout=10)
            for t in pending:
                t.cancel()
            await engine.dispose()

    # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN, and a script
    # from there would run as the console's origin (session cookie, CSRF header and all).
    # The spec stays at /openapi.json for tools.
    app = FastAPI(title="wiremesh", version="0.1.0", lifespan=lifespan,
                  description="Control plane of a WireGuard mesh overlay.",
                  docs_url=None, redoc_url=None)
    errors.install(app)
    app.add_middleware(BodyLimit)
    # Added last, so it is outside BodyLimit and its 413s get the headers too.
    app.add_middleware(console.SecurityHeaders)
    for r in (routes_admin.router, routes_agent.router, routes_auth.router,
              routes_gateway.router,
              routes_policy.router, routes_relay.router, routes_tokens.router,
              routes_users.router):
        app.include_router(r, responses=errors.PROBLEM_RESPONSES)
    if relay:
        app.include_router(routes_relay.ws_router)
    app.state.relay_secret = relay_secret
    app.state.oidc = OidcClient(oidc) if oidc else None
    openapi = app.openapi
    app.openapi = lambda: add_links(openapi())  # type: ignore[method-assign]
    app.state.paths = {}  # peer id -> its agent's last path report
    console.install(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, int]:
        return {"revision": app.state.hub.revision, "streams": app.state.hub.streams}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        metrics.REVISION.set(app.state.hub.revision)
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
