"""Enrolment: a batch of agents becomes peers in one transaction (names, overlay addresses,
tokens, auto groups), each refused or enrolled on its own."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update

from wiremesh.core.ipam import OVERLAY_NET, address_at, index_of, indexes_from
from wiremesh.store import audit
from wiremesh.store.changes import bump
from wiremesh.store.common import (
    aware,
    counter,
    hash_secret,
    name_candidates,
    new_secret,
    now,
    same_secret,
)
from wiremesh.store.database import Database
from wiremesh.store.errors import Conflict, StoreError
from wiremesh.store.setup_keys import refusal, reservations
from wiremesh.store.tables import Group, GroupMember, Meta, Peer, SetupKey
from wiremesh.store.taken import Taken

# A client whose enrolment timed out after the server committed may ask again, with the same
# key pair and setup key, for this long; later, a peer's public key is never enrolled twice.
RETRY_WINDOW = timedelta(minutes=10)


@dataclass(frozen=True)
class NewPeer:
    setup_key: str
    public_key: str
    hostname: str
    listen_port: int
    endpoints: list[str]
    proven: bool = False  # the request proved it holds the private key (a retry must)


@dataclass(frozen=True)
class Enrolled:
    peer: Peer
    token: str
    note: str | None = None  # why the peer's name is not the one it asked for


def _again(peer: Peer, key: SetupKey | None, key_hash: str, proven: bool) -> bool:
    """Is this the retry of the enrolment that made `peer` (same key pair, proven, same
    setup key)?"""
    created = aware(peer.created_at)
    return (proven and key is not None and same_secret(key.key_hash, key_hash)
            and peer.setup_key_id == key.id and not key.revoked
            and created is not None and now() - created <= RETRY_WINDOW)


class Enrolment:
    def __init__(self, db: Database) -> None:
        self.db = db
        # How long a user's peer stays in the mesh after its user's login (None: no limit).
        self.peer_login_ttl: timedelta | None = None

    def _login_expiry(self) -> datetime | None:
        return now() + self.peer_login_ttl if self.peer_login_ttl else None

    async def enroll_many(self, reqs: list[NewPeer]) -> list[Enrolled | StoreError]:
        """Enrol a batch in one transaction; each request gets its peer or the reason it was
        refused, and a refused one never affects the others. One transaction per batch is
        what lets a burst of agents enrol at the rate of the store, not of its round trips."""
        hashes = [hash_secret(r.setup_key) for r in reqs]
        async with self.db.tx() as s:
            keys = {k.key_hash: k for k in await s.scalars(
                select(SetupKey).where(SetupKey.key_hash.in_(set(hashes))))}
            existing = {p.public_key: p for p in await s.scalars(select(Peer).where(
                Peer.public_key.in_([r.public_key for r in reqs])))}
            taken_keys = set(existing)
            # Names and addresses are asked for by candidate (index lookups), not read
            # whole: a batch costs the same at 100 peers and at 10,000.
            ips = Taken(s, Peer.overlay_ip)
            names = Taken(s, Peer.name)
            await names.learn([r.hostname for r in reqs] + [
                k.peer_name for k in keys.values() if k.peer_name])
            reserved = reservations(list(await s.scalars(
                select(SetupKey).where(SetupKey.peer_name.is_not(None)))))
            groups = {g.name: g.id for g in await s.scalars(select(Group).where(
                Group.name.in_({g for k in keys.values() for g in k.auto_groups})))}
            cursor = await counter(s, "ipam_next")
            out: list[Enrolled | StoreError] = []
            added: list[tuple[Peer, dict[str, Any], SetupKey]] = []
            rotated: list[int] = []
            for req, h in zip(reqs, hashes, strict=True):
                key = keys.get(h)
                before = existing.get(req.public_key)
                if before is not None and _again(before, key, h, req.proven):
                    # Same peer, fresh token (the first one never reached the client); the
                    # key is not spent again.
                    token = new_secret("wmp")
                    before.token_hash = hash_secret(token)
                    rotated.append(before.id)  # logged: hubs hold the tokens they read
                    audit.record(s, f"peer:{before.name}", "peer.enroll_again",
                                 id=before.id, setup_key_id=before.setup_key_id)
                    out.append(Enrolled(before, token))
                    continue
                refused = refusal(key, h)
                if refused is None and key is not None and key.user_id is not None and (
                        req.public_key not in taken_keys):
                    mine = await s.scalar(select(Peer).where(
                        # Names are lower case now; one from before may not be.
                        Peer.user_id == key.user_id, func.lower(Peer.name) == req.hostname))
                    if mine is not None:
                        # The user logged in again on a machine they had: the same peer
                        # (address, groups) with the new key pair.
                        key.used_count += 1
                        token = new_secret("wmp")
                        mine.public_key, mine.token_hash = req.public_key, hash_secret(token)
                        mine.endpoints, mine.listen_port = req.endpoints, req.listen_port
                        mine.login_expires_at, mine.last_seen = self._login_expiry(), now()
                        taken_keys.add(req.public_key)
                        audit.record(s, f"peer:{mine.name}", "peer.relogin", id=mine.id)
                        rotated.append(mine.id)
                        out.append(Enrolled(mine, token))
                        continue
                if refused is None and req.public_key in taken_keys:
                    refused = Conflict("a peer with this public key is already enrolled",
                                       "public_key")
                name, note = req.hostname, None
                if refused is None and key is not None and key.peer_name:
                    name = key.peer_name
                    if await names.is_taken(name):
                        refused = Conflict(f"this setup key names its peer {name!r}, and a "
                                           "peer with that name already exists", "setup_key")
                    elif name != req.hostname:
                        note = f"this setup key names its peer {name!r}"
                elif refused is None:
                    held = {n for n, k in reserved.items() if k is not key}
                    free = await names.first_free(name_candidates(req.hostname), held)
                    assert free is not None  # the candidates never run out
                    name = free
                    if name != req.hostname:
                        note = f"the name {req.hostname!r} is taken; this peer is {name!r}"
                ip = None
                if refused is None:
                    ip = await ips.first_free(map(address_at, indexes_from(cursor)),
                                              ask=len(reqs) + 16)
                    if ip is None:
                        refused = Conflict(f"no free address left in {OVERLAY_NET}")
                if refused is not None:
                    out.append(refused)
                    continue
                assert key is not None and ip is not None
                key.used_count += 1
                # A monotonic cursor means an address is never handed out twice while its
                # peer exists; deleted peers' addresses come back only after a wrap-around.
                cursor = index_of(ip) + 1
                ips.take(ip)
                names.take(name)
                taken_keys.add(req.public_key)
                token = new_secret("wmp")
                row = dict(
                    name=name, public_key=req.public_key, overlay_ip=ip,
                    endpoints=req.endpoints, listen_port=req.listen_port,
                    token_hash=hash_secret(token), setup_key_id=key.id, created_at=now(),
                    last_seen=now(), user_id=key.user_id,
                    login_expires_at=self._login_expiry() if key.user_id else None,
                )
                peer = Peer(**row)
                added.append((peer, row, key))
                out.append(Enrolled(peer, token, note))
            if not added:
                if rotated:
                    await bump(s, peers=rotated)
                return out
            # The new rows go in as a few multi-row statements (not one ORM object each):
            # the peers, their auto groups, their audit entries.
            ids = await s.scalars(insert(Peer).returning(Peer.id, sort_by_parameter_order=True),
                                  [row for _, row, _ in added])
            for (peer, _, _), pid in zip(added, ids, strict=True):
                peer.id = pid
            # Each group once: a key created by an older server may name one twice.
            members = [{"group_id": groups[g], "peer_id": peer.id}
                       for peer, _, key in added for g in dict.fromkeys(key.auto_groups)
                       if g in groups]
            if members:
                await s.execute(insert(GroupMember), members)
            await audit.record_many(s, [
                (f"peer:{peer.name}", "peer.enroll", {"id": peer.id, "setup_key_id": key.id})
                for peer, _, key in added])
            await s.execute(update(Meta).where(Meta.key == "ipam_next").values(value=cursor))
            await bump(s, peers=[*rotated, *(peer.id for peer, _, _ in added)])
        return out
