"""Admin API: setup keys, peers and groups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Depends, HTTPException, Request

from wiremesh.core.policy import ALL_GROUP
from wiremesh.server.auth import Principal, admin_actor, principal
from wiremesh.server.jsonbody import JsonRoute
from wiremesh.server.schemas import (
    GroupCreate,
    GroupOut,
    IdPath,
    MemberRef,
    MembershipOut,
    NamePath,
    PeerOut,
    PeerPathOut,
    PeerRefPath,
    PeerRename,
    SetupKeyCreate,
    SetupKeyOut,
)
from wiremesh.store import Store
from wiremesh.store.common import aware, now
from wiremesh.store.errors import Invalid, NotFound
from wiremesh.store.tables import Peer, SetupKey

router = APIRouter(prefix="/api/v1", route_class=JsonRoute)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _key_out(k: SetupKey, plaintext: str | None = None) -> SetupKeyOut:
    exp = aware(k.expires_at)
    valid = not k.revoked and (exp is None or exp > now()) and (
        not k.usage_limit or k.used_count < k.usage_limit)
    return SetupKeyOut(
        id=k.id, name=k.name, prefix=k.key_prefix, reusable=k.reusable,
        usage_limit=k.usage_limit, used_count=k.used_count, expires_at=exp,
        revoked=k.revoked, valid=valid, auto_groups=list(k.auto_groups),
        peer_name=k.peer_name, role=k.role, key=plaintext,
    )


@router.post("/setup-keys", status_code=201, response_model=SetupKeyOut)
async def create_setup_key(body: SetupKeyCreate, request: Request,
                           actor: str = Depends(admin_actor)) -> SetupKeyOut:
    if not body.reusable and body.usage_limit > 1:
        raise Invalid("a one-off key is used once; set reusable for a limit", "usage_limit")
    if body.reusable and body.peer_name is not None:
        raise Invalid("a key that names its peer enrols one peer; it cannot be reusable",
                         "peer_name")
    row, key = await _store(request).setup_keys.create(
        actor, body.name, body.reusable, body.usage_limit,
        timedelta(seconds=body.expires_in_s) if body.expires_in_s else None, body.auto_groups,
        body.peer_name, body.role,
    )
    out = _key_out(row, key)
    # Travels with the key, so the agent can check whom it enrols with.
    out.server_fingerprint = request.app.state.hub.signer.fingerprint
    return out


@router.get("/setup-keys", response_model=list[SetupKeyOut])
async def list_setup_keys(request: Request, _: str = Depends(admin_actor)) -> list[SetupKeyOut]:
    return [_key_out(k) for k in await _store(request).setup_keys.all()]


@router.delete("/setup-keys/{key_id}", response_model=SetupKeyOut)
async def revoke_setup_key(key_id: IdPath, request: Request,
                           actor: str = Depends(admin_actor)) -> SetupKeyOut:
    return _key_out(await _store(request).setup_keys.revoke(actor, key_id))


def _peer_out(request: Request, p: Peer, groups: dict[int, list[str]],
              names: dict[str, str]) -> PeerOut:
    return PeerOut(
        id=p.id, name=p.name, public_key=p.public_key, overlay_ip=p.overlay_ip,
        endpoints=list(p.endpoints), listen_port=p.listen_port,
        groups=sorted([ALL_GROUP, *groups.get(p.id, [])]), created_at=aware(p.created_at),
        last_seen=aware(p.last_seen), connected=request.app.state.hub.connected(p.id),
        paths=[PeerPathOut(
            peer=names.get(r.peer, r.peer), path=r.path, endpoint=r.endpoint,
            last_handshake=datetime.fromtimestamp(r.last_handshake, UTC)
            if r.last_handshake else None)
            for r in request.app.state.paths.get(p.id, [])],
        user_id=p.user_id, login_expires_at=aware(p.login_expires_at),
        agent_version=p.agent_version, os_family=p.os_family,
    )


async def _names(request: Request) -> dict[str, str]:
    """Public key -> peer name, for the paths agents report by key."""
    return {q.public_key: q.name for q in await _store(request).peers.all()}


@router.get("/peers", response_model=list[PeerOut])
async def list_peers(request: Request, who: Principal = Depends(principal)) -> list[PeerOut]:
    """Every peer; a user sees only their own."""
    store = _store(request)
    groups = await store.peers.groups()
    peers = await store.peers.all()
    names = {q.public_key: q.name for q in peers}
    return [_peer_out(request, p, groups, names) for p in peers
            if who.role != "user" or who.may_manage(p)]


async def _visible_peer(request: Request, ref: str, who: Principal) -> Peer:
    """The peer `ref` names, if `who` may see it (a user: only their own; another's is
    answered like a missing one, so users learn nothing of others' peers)."""
    peer = await _store(request).peers.get(ref)
    if who.role == "user" and not who.may_manage(peer):
        raise NotFound(f"no peer {ref!r}", "peer")
    return peer


async def _manageable_peer(request: Request, ref: str, who: Principal) -> Peer:
    peer = await _visible_peer(request, ref, who)
    if not who.may_manage(peer):
        raise HTTPException(403, f"{who.name!r} has the read-only role {who.role!r}: it may "
                            f"not {request.method} {request.url.path}")
    return peer


@router.get("/peers/{ref}", response_model=PeerOut)
async def get_peer(ref: PeerRefPath, request: Request,
                   who: Principal = Depends(principal)) -> PeerOut:
    peer = await _visible_peer(request, ref, who)
    return _peer_out(request, peer, await _store(request).peers.groups(),
                     await _names(request))


@router.patch("/peers/{ref}", response_model=PeerOut)
async def rename_peer(ref: PeerRefPath, body: PeerRename, request: Request,
                      who: Principal = Depends(principal)) -> PeerOut:
    store = _store(request)
    target = await _manageable_peer(request, ref, who)
    peer = await store.peers.rename(who.actor, target.id, body.name)
    request.app.state.hub.poke()
    return _peer_out(request, peer, await store.peers.groups(), await _names(request))


@router.delete("/peers/{ref}", status_code=204)
async def delete_peer(ref: PeerRefPath, request: Request,
                      who: Principal = Depends(principal)) -> None:
    target = await _manageable_peer(request, ref, who)
    await _store(request).peers.delete(who.actor, target.id)
    request.app.state.hub.poke()


async def _group_out(request: Request, name: str) -> GroupOut:
    return GroupOut(name=name, members=(await _store(request).groups.all(name))[name])


@router.get("/groups", response_model=list[GroupOut])
async def list_groups(request: Request, _: str = Depends(admin_actor)) -> list[GroupOut]:
    store = _store(request)
    everyone = sorted(p.name for p in await store.peers.all())
    groups = [GroupOut(name=ALL_GROUP, members=everyone, builtin=True)]
    groups += [GroupOut(name=g, members=m) for g, m in (await store.groups.all()).items()]
    return groups


@router.post("/groups", status_code=201, response_model=GroupOut)
async def create_group(body: GroupCreate, request: Request,
                       actor: str = Depends(admin_actor)) -> GroupOut:
    await _store(request).groups.create(actor, body.name, body.members)
    request.app.state.hub.poke()
    return await _group_out(request, body.name)


@router.post("/groups/{name}/members", response_model=MembershipOut)
async def add_member(name: NamePath, body: MemberRef, request: Request,
                     actor: str = Depends(admin_actor)) -> MembershipOut:
    return await _membership(request, actor, name, body.peer, True)


@router.delete("/groups/{name}/members/{peer}", response_model=MembershipOut)
async def remove_member(name: NamePath, peer: PeerRefPath, request: Request,
                        actor: str = Depends(admin_actor)) -> MembershipOut:
    return await _membership(request, actor, name, peer, False)


async def _membership(request: Request, actor: str, group: str, peer: str,
                      member: bool) -> MembershipOut:
    changed = await _store(request).groups.set_membership(actor, group, peer, member)
    request.app.state.hub.poke()
    out = await _group_out(request, group)
    return MembershipOut(name=out.name, members=out.members, changed=changed)


@router.delete("/groups/{name}", status_code=204)
async def delete_group(name: NamePath, request: Request, actor: str = Depends(admin_actor)) -> None:
    await _store(request).groups.delete(actor, name)
    request.app.state.hub.poke()
