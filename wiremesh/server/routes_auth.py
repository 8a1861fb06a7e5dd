"""Logging in through the OpenID provider: browsers (authorization code + PKCE, a session
cookie) and agents (`wiremesh up --login`: the device grant, mediated by the server so the
client secret never leaves it)."""

from __future__ import annotations

import html
import logging
import secrets
from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field

from wiremesh.core.wire import PeerName
from wiremesh.server.auth import SESSION_COOKIE, Principal, principal
from wiremesh.server.jsonbody import JsonRoute
from wiremesh.server.oidc import LoginPending, LoginRefused, OidcClient, OidcError, Tokens
from wiremesh.server.schemas import Strict
from wiremesh.store.tables import User
from wiremesh.store.users import Users

log = logging.getLogger(__name__)
router = APIRouter(route_class=JsonRoute)
LOGIN_COOKIE = "wm_login"  # binds a login's state to the browser that started it
LOGIN_TTL = timedelta(minutes=10)
BAD_GATEWAY: dict[int | str, dict[str, Any]] = {
    502: {"description": "the OpenID provider failed or answered something unusable"}}


def _oidc(request: Request) -> OidcClient:
    oidc: OidcClient | None = request.app.state.oidc
    if oidc is None:
        raise HTTPException(404, "this server has no OpenID provider configured "
                            "(wiremesh server --oidc-issuer ...)")
    return oidc


def _users(request: Request) -> Users:
    users: Users = request.app.state.store.users
    return users


def _local_path(next_: str) -> str:
    # Only a path on this server: anything else would make the login an open redirect.
    if not next_.startswith("/") or next_.startswith("//") or "\\" in next_ or any(
            ord(c) < 0x21 for c in next_):
        raise HTTPException(422, f"next: {next_[:80]!r} is not a path on this server")
    return next_


async def _record_login(request: Request, tokens: Tokens) -> User:
    oidc = _oidc(request)
    who = tokens.identity
    return await _users(request).login(who, oidc.config.role_for(who.groups),
                                       tokens.refresh_token)


@router.get("/auth/login", include_in_schema=False)
async def login(request: Request,
                next_: str = Query("/", alias="next", max_length=2048)) -> Response:
    oidc = _oidc(request)
    next_ = _local_path(next_)
    base = oidc.config.public_url or str(request.base_url)
    redirect_uri = base.rstrip("/") + "/auth/callback"
    try:
        url, flow = await oidc.authorization_url(redirect_uri)
    except OidcError as e:
        raise HTTPException(502, str(e)) from None
    await _users(request).start_flow("web", {**flow, "next": next_}, LOGIN_TTL,
                                     secret=flow["state"])
    resp = RedirectResponse(url, status_code=303)
    # Lax, not Strict: it must come back with the provider's (cross-site) redirect.
    resp.set_cookie(LOGIN_COOKIE, flow["state"], max_age=int(LOGIN_TTL.total_seconds()),
                    path="/auth", secure=True, httponly=True, samesite="lax")
    return resp


@router.get("/auth/callback", include_in_schema=False)
async def callback(request: Request, state: str = Query("", max_length=512),
                   code: str = Query("", max_length=4096),
                   error: str = Query("", max_length=256)) -> Response:
    bound = request.cookies.get(LOGIN_COOKIE, "")
    if not state or not secrets.compare_digest(bound.encode(), state.encode()):
        raise HTTPException(400, "this login was not started by this browser (state does "
                            "not match): start again at /auth/login")
    flow = await _users(request).flow("web", state, consume=True)
    if flow is None:
        raise HTTPException(400, "this login expired or was used already: start again at "
                            "/auth/login")
    if error or not code:
        raise HTTPException(403, f"the provider did not log you in: {error or 'no code'}")
    oidc = _oidc(request)
    try:
        tokens = await oidc.exchange(code, flow)
    except LoginRefused as e:
        raise HTTPException(403, str(e)) from None
    except OidcError as e:
        raise HTTPException(502, str(e)) from None
    user = await _record_login(request, tokens)
    session = await _users(request).create_session(user.id, oidc.config.session_ttl)
    # A page, not a redirect: the browser arrives here from the provider (cross-site), and
    # a SameSite=Strict cookie is only sent once it navigates from our own page.
    target = html.escape(flow["next"], quote=True)
    resp = HTMLResponse(f'<!DOCTYPE html><meta charset="utf-8"><meta http-equiv="refresh" '
                        f'content="0;url={target}"><title>Logged in</title>'
                        f'<p>Logged in. <a href="{target}">Continue</a></p>')
    resp.set_cookie(SESSION_COOKIE, session,
                    max_age=int(oidc.config.session_ttl.total_seconds()), path="/",
                    secure=True, httponly=True, samesite="strict")
    resp.delete_cookie(LOGIN_COOKIE, path="/auth", secure=True, httponly=True, samesite="lax")
    return resp


@router.post("/auth/logout", status_code=204)
async def logout(request: Request, who: Principal = Depends(principal)) -> Response:
    """End this browser's login session (the cookie's session is revoked server-side)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if who.kind == "user" and cookie:
        await _users(request).revoke_session(cookie)
    resp = Response(status_code=204)
    resp.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True,
                       samesite="strict")
    return resp


class MeOut(BaseModel):
    kind: Literal["token", "user"]
    role: Literal["admin", "auditor", "user"]
    name: str
    user_id: int | None = None
    email: str = ""
    groups: list[str] = Field(default_factory=list, description="the provider's groups")


@router.get("/api/v1/me", response_model=MeOut)
async def me(request: Request, who: Principal = Depends(principal)) -> MeOut:
    """Who is calling, with which role."""
    out = MeOut(kind=who.kind, role=who.role, name=who.name, user_id=who.user_id)
    if who.user_id is not None:
        user = await _users(request).get_user(who.user_id)
        out.email, out.groups = user.email, list(user.groups)
    return out


# --- device login (agents) -------------------------------------------------------------------

class DeviceStart(Strict):
    hostname: PeerName


class DeviceStartOut(BaseModel):
    login_id: str = Field(description="the agent's handle on this login (secret)")
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None = None
    interval: int
    expires_in: int


class DevicePoll(Strict):
    login_id: str = Field(min_length=16, max_length=128)


class DevicePollOut(BaseModel):
    status: Literal["pending", "ok"]
    interval: int = 5
    setup_key: str | None = Field(None, description="one-off; its peer belongs to the user")
    server_fingerprint: str | None = None
    user: str | None = None


@router.post("/auth/device", response_model=DeviceStartOut, responses=BAD_GATEWAY)
async def device_start(body: DeviceStart, request: Request) -> DeviceStartOut:
    """Start a device login: show the user the code and URL, then poll /auth/device/poll."""
    try:
        answer = await _oidc(request).device_start()
    except OidcError as e:
        raise HTTPException(502, str(e)) from None
    expires = int(answer.get("expires_in", 600))
    interval = int(answer.get("interval", 5))
    login_id = await _users(request).start_flow(
        "device", {"device_code": answer["device_code"], "hostname": body.hostname,
                   "interval": interval}, timedelta(seconds=expires))
    return DeviceStartOut(login_id=login_id, user_code=str(answer.get("user_code", "")),
                          verification_uri=str(answer.get("verification_uri", "")),
                          verification_uri_complete=answer.get("verification_uri_complete"),
                          interval=interval, expires_in=expires)


@router.post("/auth/device/poll", response_model=DevicePollOut, responses=BAD_GATEWAY)
async def device_poll(body: DevicePoll, request: Request) -> DevicePollOut:
    """`pending` until the user has logged in at the provider; then a one-off setup key that
    enrols this machine as the user's peer."""
    users = _users(request)
    flow = await users.flow("device", body.login_id, consume=False)
    if flow is None:
        raise HTTPException(404, "login_id: unknown or expired device login: start again")
    interval = int(flow.get("interval", 5))
    try:
        tokens = await _oidc(request).device_poll(flow["device_code"])
    except LoginPending as e:
        return DevicePollOut(status="pending", interval=interval + (5 if e.slow_down else 0))
    except LoginRefused as e:
        await users.flow("device", body.login_id, consume=True)
        raise HTTPException(403, str(e)) from None
    except OidcError as e:
        raise HTTPException(502, str(e)) from None
    if await users.flow("device", body.login_id, consume=True) is None:
        raise HTTPException(404, "login_id: this device login was finished already")
    user = await _record_login(request, tokens)
    key = await users.login_key(user, flow["hostname"])
    log.info("device login of %s for %s", user.sub, flow["hostname"])
    return DevicePollOut(status="ok", interval=interval, setup_key=key,
                         server_fingerprint=request.app.state.hub.signer.fingerprint,
                         user=user.name or user.email or user.sub)
