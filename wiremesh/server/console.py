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
# Every response, API answers included: a text/plain policy export can hold HTML from a
# policy's description, so no MIME sniffing; no page of ours may be framed or leak its URL.
COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
CONSOLE_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"cross-origin-opener-policy", b"same-origin"),
]
# Nothing but the console is meant to run in a browser: JSON, the policy export and the
# login callback's page (a meta refresh and a link) need no script, style or fetch.
OTHER_HEADERS = [(b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")]


def _is_console(path: str) -> bool:
    return path == "/" or path.startswith(ASSETS + "/")


def _add_missing(headers: list[tuple[bytes, bytes]],
                 extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` plus those of `extra` it does not set itself (a route's own choice wins)."""
    present = {name.lower() for name, _ in headers}
    return [*headers, *((n, v) for n, v in extra if n not in present)]


class SecurityHeaders:
    """Adds the security headers to every HTTP response: the console's strict CSP to its
    pages and assets, a CSP that allows nothing to everything else. WebSockets pass as they
    are, and streamed bodies are untouched (only the response start is rewritten)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [*COMMON_HEADERS,
                 *(CONSOLE_HEADERS if _is_console(scope["path"]) else OTHER_HEADERS)]

        async def with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                msg["headers"] = _add_missing(list(msg.get("headers", [])), extra)
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
