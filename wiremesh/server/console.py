"""The web console: static assets shipped in the package, served at `/` under a strict
Content-Security-Policy, and the one endpoint the page asks who is logged in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wiremesh.server.auth import CSRF_HEADER, CSRF_TOKEN, principal

STATIC = Path(__file__).parent / "static"
ASSETS = "/assets"

# Scripts, styles and fetches from this origin only: no inline script or style, no eval, no
# other site, no framing; text reaches the DOM as text (Trusted Types leaves no HTML sink).
CSP = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "require-trusted-types-for 'script'",
    "trusted-types 'none'",
))
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class ConsoleHeaders:
    """Adds the console's security headers to the pages and assets it serves."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/" or path.startswith(ASSETS + "/")):
            await self.app(scope, receive, send)
            return

        async def with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                msg["headers"] = [*msg.get("headers", []), *HEADERS]
            await send(msg)

        await self.app(scope, receive, with_headers)


async def session(request: Request) -> dict[str, Any]:
    """Who the browser is logged in as. A browser that is not logged in gets an answer too
    (not a 401), so the console offers the login link without an error in the browser."""
    links = {"sso": request.app.state.oidc is not None, "login_url": "/auth/login",
             "logout_url": "/auth/logout"}
    try:
        who = await principal(request)
    except HTTPException as e:
        if e.status_code != 401:
            raise
        return {"authenticated": False, **links}
    return {"authenticated": True, "name": who.name, "role": who.role, "kind": who.kind,
            "user_id": who.user_id, "csrf_header": CSRF_HEADER, "csrf_token": CSRF_TOKEN,
            **links}


def install(app: FastAPI) -> None:
    app.add_middleware(ConsoleHeaders)
    app.mount(ASSETS, StaticFiles(directory=STATIC / "assets"), name="console-assets")
    app.add_api_route("/console/session", session, methods=["GET"], include_in_schema=False)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        # Browsers ask every page's origin for it (the login callback's page too).
        return FileResponse(STATIC / "assets" / "favicon.svg", media_type="image/svg+xml")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        # Revalidated on each load so a new release's page never runs old cached scripts.
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
