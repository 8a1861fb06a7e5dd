"""Setup keys: what lets an agent enrol, with how many uses, until when, into which groups,
and optionally under which name (reserved for its peer while the key can still enrol it)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from wiremesh.store import audit, lookup
from wiremesh.store.common import aware, hash_secret, new_secret, now, same_secret
from wiremesh.store.database import Database
from wiremesh.store.errors import Conflict, NotFound, Refused, StoreError
from wiremesh.store.tables import Peer, SetupKey


def refusal(key: SetupKey | None, key_hash: str) -> StoreError | None:
    """Why this setup key may not enrol a peer now, if it may not."""
    if key is None or not same_secret(key.key_hash, key_hash):
        return Refused("setup key is not valid", "setup_key")
    if key.revoked:
        return Refused("setup key has been revoked", "setup_key")
    exp = aware(key.expires_at)
    if exp is not None and exp <= now():
        return Refused("setup key has expired", "setup_key")
    if key.usage_limit and key.used_count >= key.usage_limit:
        return Refused("setup key is used up", "setup_key")
    return None


def reservations(keys: list[SetupKey]) -> dict[str, SetupKey]:
    """Peer names held for the keys that can still enrol their peer."""
    return {k.peer_name: k for k in keys if k.peer_name and refusal(k, k.key_hash) is None}


async def naming_group(s: AsyncSession, group: str) -> list[str]:
    """The setup keys that can still enrol a peer into `group`: a key that never can again
    (revoked, expired, used up) is inert, and as keys are only ever revoked, never deleted,
    counting it would keep its groups forever."""
    return [f"{k.name} (id {k.id})" for k in await s.scalars(select(SetupKey))
            if group in k.auto_groups and refusal(k, k.key_hash) is None]


async def check_name_free(s: AsyncSession, name: str, field: str) -> None:
    """Refuse a name another peer has, or a usable setup key holds for its peer."""
    if await s.scalar(select(Peer.id).where(Peer.name == name)) is not None:
        raise Conflict(f"a peer named {name!r} already exists", field)
    held = reservations(list(await s.scalars(
        select(SetupKey).where(SetupKey.peer_name == name))))
    if name in held:
        raise Conflict(f"the name {name!r} is reserved by setup key "
                       f"{held[name].name!r} (id {held[name].id})", field)


class SetupKeys:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self, actor: str, name: str, reusable: bool, usage_limit: int,
        expires_in: timedelta | None, auto_groups: list[str], peer_name: str | None = None,
        role: str = "agent",
    ) -> tuple[SetupKey, str]:
        key = new_secret("wmk")
        async with self.db.tx() as s:
            for g in auto_groups:
                await lookup.group(s, g, field="auto_groups")
            if peer_name is not None:
                await check_name_free(s, peer_name, "peer_name")
            row = SetupKey(
                name=name, key_hash=hash_secret(key), key_prefix=key[:10], reusable=reusable,
                usage_limit=usage_limit if reusable else 1, used_count=0,
                expires_at=now() + expires_in if expires_in else None, revoked=False,
                # Once each: enrolment adds the peer to each group named (a group named
                # twice made every enrolment with the key fail on the membership's key).
                auto_groups=list(dict.fromkeys(auto_groups)), created_at=now(),
                peer_name=peer_name, role=role,
            )
            s.add(row)
            await s.flush()
            audit.record(s, actor, "setup_key.create", id=row.id, name=name,
                         peer_name=peer_name, role=role)
        return row, key

    async def all(self) -> list[SetupKey]:
        async with self.db.reads() as s:
            return list(await s.scalars(select(SetupKey).order_by(SetupKey.id)))

    async def revoke(self, actor: str, key_id: int) -> SetupKey:
        async with self.db.tx() as s:
            row = await s.get(SetupKey, key_id)
            if row is None:
                raise NotFound(f"no setup key with id {key_id}", "id")
            row.revoked = True
            audit.record(s, actor, "setup_key.revoke", id=key_id)
            return row
