"""Users (people who logged in through the provider): list, delete."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from wiremesh.server.auth import admin_actor
from wiremesh.server.jsonbody import JsonRoute
from wiremesh.server.schemas import IdPath
from wiremesh.store.common import aware
from wiremesh.store.tables import User

router = APIRouter(prefix="/api/v1", route_class=JsonRoute)


class UserOut(BaseModel):
    id: int
    sub: str
    email: str
    name: str
    role: str
    groups: list[str]
    created_at: datetime
    last_login: datetime | None
    checked_at: datetime | None
    disabled_at: datetime | None
    disabled_reason: str
    peers: list[str]


def _out(u: User, peers: list[str]) -> UserOut:
    return UserOut(id=u.id, sub=u.sub, email=u.email, name=u.name, role=u.role,
                   groups=list(u.groups), created_at=aware(u.created_at),
                   last_login=aware(u.last_login), checked_at=aware(u.checked_at),
                   disabled_at=aware(u.disabled_at), disabled_reason=u.disabled_reason,
                   peers=peers)


async def _peers_by_user(request: Request) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for p in await request.app.state.store.peers.all():
        if p.user_id is not None:
            out.setdefault(p.user_id, []).append(p.name)
    return out


@router.get("/users", response_model=list[UserOut])
async def list_users(request: Request, _: str = Depends(admin_actor)) -> list[UserOut]:
    peers = await _peers_by_user(request)
    return [_out(u, peers.get(u.id, []))
            for u in await request.app.state.store.users.list_users()]


@router.delete("/users/{user_id}", response_model=UserOut)
async def delete_user(user_id: IdPath, request: Request,
                      actor: str = Depends(admin_actor)) -> UserOut:
    """Forget the user: their sessions end and their peers leave the mesh at once."""
    peers = (await _peers_by_user(request)).get(user_id, [])
    user = await request.app.state.store.users.delete_user(actor, user_id)
    request.app.state.hub.poke()
    return _out(user, peers)
