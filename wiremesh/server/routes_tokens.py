"""Admin tokens: create (shown once), list, revoke; every change audited with the actor."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from wiremesh.server.auth import admin_actor
from wiremesh.server.jsonbody import JsonRoute
from wiremesh.server.schemas import Name, NamePath, Strict
from wiremesh.store.common import aware
from wiremesh.store.tables import AdminToken

router = APIRouter(prefix="/api/v1", route_class=JsonRoute)


class AdminTokenCreate(Strict):
    name: Name
    role: Literal["admin", "auditor"] = "admin"


class AdminTokenOut(BaseModel):
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None
    token: str | None = None  # only in the answer to create, never again


def _out(t: AdminToken, plaintext: str | None = None) -> AdminTokenOut:
    return AdminTokenOut(name=t.name, role=t.role, created_at=aware(t.created_at),
                         revoked_at=aware(t.revoked_at), token=plaintext)


@router.post("/admin-tokens", status_code=201, response_model=AdminTokenOut)
async def create_token(body: AdminTokenCreate, request: Request,
                       actor: str = Depends(admin_actor)) -> AdminTokenOut:
    row, token = await request.app.state.store.admin_tokens.create(actor, body.name, body.role)
    return _out(row, token)


@router.get("/admin-tokens", response_model=list[AdminTokenOut])
async def list_tokens(request: Request, _: str = Depends(admin_actor)) -> list[AdminTokenOut]:
    return [_out(t) for t in await request.app.state.store.admin_tokens.all()]


@router.delete("/admin-tokens/{name}", response_model=AdminTokenOut)
async def revoke_token(name: NamePath, request: Request,
                       actor: str = Depends(admin_actor)) -> AdminTokenOut:
    return _out(await request.app.state.store.admin_tokens.revoke(actor, name))
