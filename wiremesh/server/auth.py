"""Who is calling: admin tokens and users' login sessions (the API and the console), and
enrolled peers (agents).

The contract every route codes against:

- `principal` (a FastAPI dependency) yields a `Principal` or answers 401:
  - `Authorization: Bearer <admin token>` -> kind "token", role "admin" or "auditor";
  - the login-session cookie `wm_session` (set by /auth/callback) -> kind "user", the role
    the provider's groups map to ("admin", "auditor" or "user") and `user_id`.
  A cookie-authenticated request that is not a read (GET/HEAD/OPTIONS) must carry the
  header `X-CSRF-Token: 1` (`CSRF_TOKEN`; a header no other site's page can send without
  our CORS consent, which is never given) and, when the browser sends an Origin, come from
  this server's own origin; else 403. (The cookie is SameSite=Strict as well.)
- `admin_actor`: admins may do anything, auditors only read, users nothing (403); yields
  the actor name for the audit log ("admin:NAME" or "user:SUB").
- `Principal.may_manage(peer)`: admins any peer, users their own peers, auditors none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from starlette.requests import HTTPConnection

from wiremesh.server.hub import NetmapHub
from wiremesh.store import Store
from wiremesh.store.tables import Peer

SESSION_COOKIE = "wm_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_TOKEN = "1"
READS = {"GET", "HEAD", "OPTIONS"}
Role = Literal["admin", "auditor", "user"]


@dataclass(frozen=True)
class Principal:
    kind: Literal["token", "user"]
    role: Role
    actor: str  # as the audit log names it
    name: str  # token name, or the user's name / email
    user_id: int | None = None

    @property
    def read_only(self) -> bool:
        return self.role == "auditor"

    def may_manage(self, peer: Peer) -> bool:
        return self.role == "admin" or (
            self.role == "user" and self.user_id is not None and peer.user_id == self.user_id)


def bearer_token(conn: HTTPConnection) -> str | None:
    """The bearer token of a request or WebSocket handshake, if it has one."""
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _check_csrf(request: Request) -> None:
    if request.method in READS:
        return
    if request.headers.get(CSRF_HEADER) != CSRF_TOKEN:
        raise HTTPException(403, f"a browser session's {request.method} needs the header "
                            f"{CSRF_HEADER}: {CSRF_TOKEN} (cross-site request refused)")
    origin = request.headers.get("origin")
    if origin is not None:
        own = urlsplit(str(request.base_url))
        theirs = urlsplit(origin)
        if (theirs.scheme, theirs.netloc) != (own.scheme, own.netloc):
            raise HTTPException(403, f"request from origin {origin!r} refused: only this "
                                "server's own pages may change things with a session")


async def principal(request: Request) -> Principal:
    store: Store = request.app.state.store
    token = bearer_token(request)
    if token is not None:
        row = await store.admin_tokens.for_token(token)
        if row is None:
            raise _unauthorized("invalid admin token (unknown or revoked)")
        role: Role = "admin" if row.role == "admin" else "auditor"
        return Principal("token", role, f"admin:{row.name}", row.name)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is None:
        raise _unauthorized("not logged in: send an admin token (Authorization: Bearer) "
                            "or log in at /auth/login")
    user = await store.users.session_user(cookie)
    if user is None:
        raise _unauthorized("the login session has expired or was ended: log in again "
                            "at /auth/login")
    _check_csrf(request)
    role = "admin" if user.role == "admin" else "auditor" if user.role == "auditor" else "user"
    return Principal("user", role, f"user:{user.sub}", user.name or user.email or user.sub,
                     user.id)


async def admin_actor(request: Request) -> str:
    """The acting admin's name for the audit log; an auditor may only read, a user not at
    all (users have their own routes: their peers)."""
    who = await principal(request)
    if who.role == "user":
        raise HTTPException(403, f"{who.name!r} has the role 'user': only admins and "
                            f"auditors may {request.method} {request.url.path}")
    if who.role != "admin" and request.method not in READS:
        what = f"admin token {who.name!r}" if who.kind == "token" else f"user {who.name!r}"
        raise HTTPException(403, f"{what} has the read-only role {who.role!r}: it may not "
                            f"{request.method} {request.url.path}")
    return who.actor


async def current_peer(request: Request) -> Peer:
    store: Store = request.app.state.store
    token = bearer_token(request)
    if token is None:
        raise _unauthorized("missing bearer token")
    peer = await store.peers.for_token(token)
    if peer is None:
        raise _unauthorized("invalid peer credential (was this peer deleted?)")
    return peer


async def streaming_peer(request: Request) -> tuple[int, str]:
    """(peer id, public key) of an agent opening its netmap stream: from the hub's last read
    of the store when it has the token (the agents of a dead replica come back all at once,
    thousands of lookups), else as `current_peer` (enrolled a moment ago)."""
    token = bearer_token(request)
    hub: NetmapHub = request.app.state.hub
    hit = None if token is None else hub.credential(token)
    if hit is not None:
        return hit
    peer = await current_peer(request)
    return peer.id, peer.public_key


__all__ = ["CSRF_HEADER", "CSRF_TOKEN", "SESSION_COOKIE", "Principal", "admin_actor",
           "bearer_token", "current_peer", "principal", "streaming_peer"]
