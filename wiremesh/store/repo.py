"""Repository over the store: every write is one transaction, and every write that can change
a netmap bumps the `revision` counter in that same transaction so replicas see it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from wiremesh.core.ipam import IpamExhausted, address_at, next_free_index
from wiremesh.core.models import MeshState, PeerInfo, Policy, PortRange, Route
from wiremesh.store.db import is_postgres, lock_writers, snapshot_reads
from wiremesh.store.tables import (
    AdminToken,
    AuditEntry,
    Group,
    GroupMember,
    Meta,
    Peer,
    PolicyRow,
    RouteRow,
    ServerKey,
    SetupKey,
)

CHANGES_CHANNEL = "wiremesh_changes"
ALL_GROUP = "all"  # implicit: every peer is a member; it cannot be edited
DEFAULT_POLICY = Policy(name="default", sources=(ALL_GROUP,), destinations=(ALL_GROUP,),
                        description="all peers reach all peers")


class StoreError(Exception):
    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


class Refused(StoreError):
    status = 403


def hash_secret(secret: str) -> str:
    # Secrets are 256-bit random tokens, so a plain SHA-256 (not a password KDF) is enough.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def now() -> datetime:
    return datetime.now(UTC)


def _aware(dt: datetime | None) -> datetime | None:
    # SQLite hands datetimes back naive; they were stored as UTC.
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


@dataclass(frozen=True)
class NewPeer:
    setup_key: str
    public_key: str
    hostname: str
    listen_port: int
    endpoints: list[str]


@dataclass(frozen=True)
class Enrolled:
    peer: Peer
    token: str
    note: str | None = None  # why the peer's name is not the one it asked for


# A client whose enrolment timed out after the server committed may ask again, with the same
# key pair and setup key, for this long; later, a peer's public key is never enrolled twice.
RETRY_WINDOW = timedelta(minutes=10)
MAX_NAME = 63  # the longest Name (core/wire.py)


def _refusal(key: SetupKey | None, key_hash: str) -> StoreError | None:
    """Why this setup key may not enrol a peer now, if it may not."""
    if key is None or not secrets.compare_digest(key.key_hash, key_hash):
        return Refused("setup key is not valid", "setup_key")
    if key.revoked:
        return Refused("setup key has been revoked", "setup_key")
    exp = _aware(key.expires_at)
    if exp is not None and exp <= now():
        return Refused("setup key has expired", "setup_key")
    if key.usage_limit and key.used_count >= key.usage_limit:
        return Refused("setup key is used up", "setup_key")
    return None


MAX_ID = 2**31 - 1  # ids are 32-bit integer columns


def _as_id(ref: str | int) -> int | None:
    """The row id `ref` names, if it is one: ASCII digits within the column's range (a
    bigger number, or '²', would make the database or int() raise instead of not finding)."""
    if isinstance(ref, int):
        return ref if 0 < ref <= MAX_ID else None
    if not (ref.isascii() and ref.isdigit() and len(ref) <= len(str(MAX_ID))):
        return None
    return int(ref) if 0 < int(ref) <= MAX_ID else None


def _unique_name(wanted: str, taken: set[str] | dict[str, Any]) -> str:
    """`wanted`, or `wanted-N` with the smallest free N (shortened to stay a valid name)."""
    if wanted not in taken:
        return wanted
    n = 2
    while True:
        suffix = f"-{n}"
        name = wanted[:MAX_NAME - len(suffix)] + suffix
        if name not in taken:
            return name
        n += 1


def _reservations(keys: list[SetupKey]) -> dict[str, SetupKey]:
    """Peer names held for the keys that can still enrol their peer."""
    return {k.peer_name: k for k in keys if k.peer_name and _refusal(k, k.key_hash) is None}


def _again(peer: Peer, key: SetupKey | None, key_hash: str) -> bool:
    """Is this the retry of the enrolment that made `peer` (same key pair, same setup key)?"""
    created = _aware(peer.created_at)
    return (key is not None and secrets.compare_digest(key.key_hash, key_hash)
            and peer.setup_key_id == key.id and not key.revoked
            and created is not None and now() - created <= RETRY_WINDOW)


def policy_from_row(r: PolicyRow) -> Policy:
    return Policy(
        name=r.name, sources=tuple(r.sources), destinations=tuple(r.destinations),
        protocol=r.protocol,  # type: ignore[arg-type]
        ports=tuple(PortRange.parse(p) for p in r.ports), bidirectional=r.bidirectional,
        enabled=r.enabled, destination_routes=tuple(r.destination_routes),
        description=r.description,
    )


def policy_to_row_values(p: Policy) -> dict[str, Any]:
    return dict(
        name=p.name, description=p.description, enabled=p.enabled, sources=list(p.sources),
        destinations=list(p.destinations), destination_routes=list(p.destination_routes),
        protocol=p.protocol, ports=[str(x) for x in p.ports], bidirectional=p.bidirectional,
    )


def route_from_row(r: RouteRow) -> Route:
    return Route(
        name=r.name, prefix=r.prefix, router_group=r.router_group, metric=r.metric,
        router_metrics=tuple(sorted(r.router_metrics.items())), masquerade=r.masquerade,
        enabled=r.enabled,
    )


def route_to_row_values(r: Route) -> dict[str, Any]:
    return dict(name=r.name, prefix=r.prefix, router_group=r.router_group, metric=r.metric,
                router_metrics=dict(r.router_metrics), masquerade=r.masquerade,
                enabled=r.enabled)


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.reads = async_sessionmaker(snapshot_reads(engine), expire_on_commit=False)
        # SQLite has one writer at a time and its busy handler is a sleep-and-retry loop
        # that lets an unlucky writer starve; queueing our writers in a fair FIFO lock keeps
        # busy waits for the rare writer from another process.
        self._write_lock = None if is_postgres(engine) else asyncio.Lock()
        self._peer_infos: dict[int, tuple[tuple[Any, ...], PeerInfo]] = {}

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncSession]:
        async with contextlib.AsyncExitStack() as stack:
            if self._write_lock is not None:
                await stack.enter_async_context(self._write_lock)
            s = await stack.enter_async_context(self.sessions())
            await stack.enter_async_context(s.begin())
            await lock_writers(await s.connection())
            yield s

    # --- counters ------------------------------------------------------------------------

    async def _counter(self, s: AsyncSession, key: str) -> int:
        v = await s.scalar(select(Meta.value).where(Meta.key == key))
        return int(v or 0)

    async def _bump(self, s: AsyncSession) -> int:
        # One statement, so no two changes can ever get the same revision (a hub that holds
        # a revision never loads a second change committed under it).
        rev = await s.scalar(
            update(Meta).where(Meta.key == "revision").values(value=Meta.value + 1)
            .returning(Meta.value).execution_options(synchronize_session=False))
        if rev is None:
            raise RuntimeError("the store has no revision counter: was it bootstrapped?")
        if is_postgres(self.engine):
            # Delivered at commit (never for a rolled-back change) to every replica's listen().
            await s.execute(text(f"NOTIFY {CHANGES_CHANNEL}"))
        return rev

    async def listen(self, on_change: Callable[[], None]) -> Callable[[], Awaitable[None]]:
        """Call `on_change` whenever any replica commits a change (PostgreSQL LISTEN); returns
        the coroutine function that stops listening. On SQLite, replicas share a file on one
        machine and the hub's revision poll is all there is, so this does nothing."""
        if not is_postgres(self.engine):
            async def nothing() -> None:
                return None

            return nothing
        conn = await self.engine.connect()
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None  # asyncpg's connection, open until stop()
        callback = lambda *_args: on_change()  # noqa: E731 - asyncpg passes 4 arguments
        await raw.add_listener(CHANGES_CHANNEL, callback)

        async def stop() -> None:
            try:
                await raw.remove_listener(CHANGES_CHANNEL, callback)
            finally:
                await conn.close()

        return stop

    async def revision(self) -> int:
        async with self.reads() as s:
            return await self._counter(s, "revision")

    async def audit(self, s: AsyncSession, actor: str, action: str, **detail: Any) -> None:
        s.add(AuditEntry(at=now(), actor=actor, action=action, detail=detail))

    # --- bootstrap and admin auth ----------------------------------------------------------

    async def bootstrap(self) -> str | None:
        """First start on an empty store: seed counters and the default policy, and return a
        new admin token (shown once). Later starts return None."""
        async with self.tx() as s:
            if await s.scalar(select(func.count()).select_from(Meta)):
                return None
            s.add_all([Meta(key="revision", value=1), Meta(key="ipam_next", value=1)])
            s.add(PolicyRow(**policy_to_row_values(DEFAULT_POLICY)))
            token = new_secret("wma")
            s.add(AdminToken(name="initial", token_hash=hash_secret(token), created_at=now(),
                             role="admin"))
            await self.audit(s, "system", "bootstrap")
            return token

    async def signing_key(self, generate: Callable[[], bytes]) -> bytes:
        """The server's signing key (raw bytes), made with `generate` on first use. Replicas
        starting together may both generate one: the first insert wins, the other reads it."""
        for _ in range(2):
            async with self.reads() as s:
                row = await s.scalar(select(ServerKey).where(ServerKey.id == 1))
            if row is not None:
                return base64.b64decode(row.private_key)
            try:
                async with self.tx() as s:
                    s.add(ServerKey(id=1, private_key=base64.b64encode(generate()).decode(),
                                    created_at=now()))
            except IntegrityError:
                continue
        raise StoreError("could not read or create the server signing key")

    async def admin_for_token(self, token: str) -> AdminToken | None:
        """The live admin token with this secret (read on every request, so a revocation
        through any replica holds at once everywhere)."""
        h = hash_secret(token)
        async with self.reads() as s:
            row = await s.scalar(select(AdminToken).where(AdminToken.token_hash == h))
        if row is None or row.revoked_at is not None or not secrets.compare_digest(
                row.token_hash, h):
            return None
        return row

    async def create_admin_token(self, actor: str, name: str, role: str,
                                 ) -> tuple[AdminToken, str]:
        token = new_secret("wma")
        async with self.tx() as s:
            if await s.scalar(select(AdminToken.id).where(
                    AdminToken.name == name, AdminToken.revoked_at.is_(None))) is not None:
                raise Conflict(f"an admin token named {name!r} already exists", "name")
            row = AdminToken(name=name, token_hash=hash_secret(token), created_at=now(),
                             role=role)
            s.add(row)
            await self.audit(s, actor, "admin_token.create", name=name, role=role)
        return row, token

    async def list_admin_tokens(self) -> list[AdminToken]:
        async with self.reads() as s:
            return list(await s.scalars(select(AdminToken).order_by(AdminToken.id)))

    async def revoke_admin_token(self, actor: str, name: str) -> AdminToken:
        async with self.tx() as s:
            row = await s.scalar(select(AdminToken).where(
                AdminToken.name == name, AdminToken.revoked_at.is_(None)))
            if row is None:
                raise NotFound(f"no admin token named {name!r}", "name")
            row.revoked_at = now()
            await self.audit(s, actor, "admin_token.revoke", name=name)
            return row

    # --- setup keys --------------------------------------------------------------------------

    async def create_setup_key(
        self, actor: str, name: str, reusable: bool, usage_limit: int,
        expires_in: timedelta | None, auto_groups: list[str], peer_name: str | None = None,
    ) -> tuple[SetupKey, str]:
        key = new_secret("wmk")
        async with self.tx() as s:
            for g in auto_groups:
                await self._group(s, g, field="auto_groups")
            if peer_name is not None:
                await self._check_name_free(s, peer_name, "peer_name")
            row = SetupKey(
                name=name, key_hash=hash_secret(key), key_prefix=key[:10], reusable=reusable,
                usage_limit=usage_limit if reusable else 1, used_count=0,
                expires_at=now() + expires_in if expires_in else None, revoked=False,
                auto_groups=auto_groups, created_at=now(), peer_name=peer_name,
            )
            s.add(row)
            await s.flush()
            await self.audit(s, actor, "setup_key.create", id=row.id, name=name,
                             peer_name=peer_name)
        return row, key

    async def _check_name_free(self, s: AsyncSession, name: str, field: str) -> None:
        """Refuse a name another peer has, or a usable setup key holds for its peer."""
        if await s.scalar(select(Peer.id).where(Peer.name == name)) is not None:
            raise Conflict(f"a peer named {name!r} already exists", field)
        held = _reservations(list(await s.scalars(
            select(SetupKey).where(SetupKey.peer_name == name))))
        if name in held:
            raise Conflict(f"the name {name!r} is reserved by setup key "
                           f"{held[name].name!r} (id {held[name].id})", field)

    async def list_setup_keys(self) -> list[SetupKey]:
        async with self.reads() as s:
            return list(await s.scalars(select(SetupKey).order_by(SetupKey.id)))

    async def revoke_setup_key(self, actor: str, key_id: int) -> SetupKey:
        async with self.tx() as s:
            row = await s.get(SetupKey, key_id)
            if row is None:
                raise NotFound(f"no setup key with id {key_id}", "id")
            row.revoked = True
            await self.audit(s, actor, "setup_key.revoke", id=key_id)
            return row

    # --- enrolment and peer credentials -----------------------------------------------------

    async def enroll_many(self, reqs: list[NewPeer]) -> list[Enrolled | StoreError]:
        """Enrol a batch in one transaction; each request gets its peer or the reason it was
        refused, and a refused one never affects the others. One transaction per batch is
        what lets a burst of agents enrol at the rate of the store, not of its round trips."""
        hashes = [hash_secret(r.setup_key) for r in reqs]
        async with self.tx() as s:
            keys = {k.key_hash: k for k in await s.scalars(
                select(SetupKey).where(SetupKey.key_hash.in_(set(hashes))))}
            existing = {p.public_key: p for p in await s.scalars(select(Peer).where(
                Peer.public_key.in_([r.public_key for r in reqs])))}
            taken_keys = set(existing)
            used_ips = set(await s.scalars(select(Peer.overlay_ip)))
            names = set(await s.scalars(select(Peer.name)))
            reserved = _reservations(list(await s.scalars(
                select(SetupKey).where(SetupKey.peer_name.is_not(None)))))
            groups = {g.name: g.id for g in await s.scalars(select(Group))}
            cursor = await self._counter(s, "ipam_next")
            out: list[Enrolled | StoreError] = []
            added: list[tuple[Peer, SetupKey]] = []
            for req, h in zip(reqs, hashes, strict=True):
                key = keys.get(h)
                before = existing.get(req.public_key)
                if before is not None and _again(before, key, h):
                    # Same peer, fresh token (the first one never reached the client); the
                    # key is not spent again.
                    token = new_secret("wmp")
                    before.token_hash = hash_secret(token)
                    await self.audit(s, f"peer:{before.name}", "peer.enroll_again",
                                     id=before.id, setup_key_id=before.setup_key_id)
                    out.append(Enrolled(before, token))
                    continue
                refused = _refusal(key, h)
                if refused is None and req.public_key in taken_keys:
                    refused = Conflict("a peer with this public key is already enrolled",
                                       "public_key")
                name, note = req.hostname, None
                if refused is None and key is not None and key.peer_name:
                    name = key.peer_name
                    if name in names:
                        refused = Conflict(f"this setup key names its peer {name!r}, and a "
                                           "peer with that name already exists", "setup_key")
                    elif name != req.hostname:
                        note = f"this setup key names its peer {name!r}"
                elif refused is None:
                    held = {n for n, k in reserved.items() if k is not key}
                    name = _unique_name(req.hostname, names | held)
                    if name != req.hostname:
                        note = f"the name {req.hostname!r} is taken; this peer is {name!r}"
                if refused is None:
                    try:
                        idx = next_free_index(cursor, used_ips)
                    except IpamExhausted as e:
                        refused = Conflict(str(e))
                if refused is not None:
                    out.append(refused)
                    continue
                assert key is not None
                key.used_count += 1
                # A monotonic cursor means an address is never handed out twice while its
                # peer exists; deleted peers' addresses come back only after a wrap-around.
                cursor = idx + 1
                ip = address_at(idx)
                used_ips.add(ip)
                names.add(name)
                taken_keys.add(req.public_key)
                token = new_secret("wmp")
                peer = Peer(
                    name=name, public_key=req.public_key, overlay_ip=ip,
                    endpoints=req.endpoints, listen_port=req.listen_port,
                    token_hash=hash_secret(token), setup_key_id=key.id, created_at=now(),
                    last_seen=now(),
                )
                s.add(peer)
                added.append((peer, key))
                out.append(Enrolled(peer, token, note))
            if not added:
                return out
            await s.flush()
            for peer, key in added:
                s.add_all(GroupMember(group_id=groups[g], peer_id=peer.id)
                          for g in key.auto_groups if g in groups)
                await self.audit(s, f"peer:{peer.name}", "peer.enroll", id=peer.id,
                                 setup_key_id=key.id)
            await s.execute(update(Meta).where(Meta.key == "ipam_next").values(value=cursor))
            await self._bump(s)
        return out

    async def peer_for_token(self, token: str) -> Peer | None:
        h = hash_secret(token)
        async with self.reads() as s:
            row = await s.scalar(select(Peer).where(Peer.token_hash == h))
        if row is None or not secrets.compare_digest(row.token_hash, h):
            return None
        return row

    async def report_endpoints(self, peer_id: int, endpoints: list[str], listen_port: int) -> bool:
        """Record what the agent reported; returns True when netmaps must change."""
        async with self.tx() as s:
            peer = await s.get(Peer, peer_id)
            if peer is None:
                raise NotFound(f"no peer with id {peer_id}")
            peer.last_seen = now()
            if peer.endpoints == endpoints and peer.listen_port == listen_port:
                return False
            peer.endpoints, peer.listen_port = endpoints, listen_port
            await self._bump(s)
            return True

    # --- peers ------------------------------------------------------------------------------

    async def list_peers(self) -> list[Peer]:
        async with self.reads() as s:
            return list(await s.scalars(select(Peer).order_by(Peer.id)))

    async def peer_groups(self) -> dict[int, list[str]]:
        async with self.reads() as s:
            rows = await s.execute(
                select(GroupMember.peer_id, Group.name)
                .join(Group, Group.id == GroupMember.group_id)
            )
            out: dict[int, list[str]] = {}
            for pid, name in rows:
                out.setdefault(pid, []).append(name)
            return out

    async def peer_exists(self, peer_id: int) -> bool:
        async with self.reads() as s:
            return await s.get(Peer, peer_id) is not None

    async def get_peer(self, ref: str | int) -> Peer:
        async with self.reads() as s:
            return await self._peer(s, ref)

    async def _peer(self, s: AsyncSession, ref: str | int, field: str = "peer") -> Peer:
        """A peer by id or by name."""
        row = None
        pid = _as_id(ref)
        if pid is not None:
            row = await s.get(Peer, pid)
        if row is None:
            row = await s.scalar(select(Peer).where(Peer.name == str(ref)))
        if row is None:
            raise NotFound(f"no peer {ref!r}", field)
        return row

    async def rename_peer(self, actor: str, ref: str | int, name: str) -> Peer:
        try:
            async with self.tx() as s:
                peer = await self._peer(s, ref)
                old = peer.name
                if name == old:
                    return peer
                await self._check_name_free(s, name, "name")
                peer.name = name
                await s.flush()
                await self._bump(s)
                await self.audit(s, actor, "peer.rename", id=peer.id, old=old, new=name)
                return peer
        except IntegrityError:
            raise Conflict(f"a peer named {name!r} already exists", "name") from None

    async def delete_peer(self, actor: str, ref: str | int) -> Peer:
        async with self.tx() as s:
            peer = await self._peer(s, ref)
            await s.execute(delete(GroupMember).where(GroupMember.peer_id == peer.id))
            await s.delete(peer)
            await self._bump(s)
            await self.audit(s, actor, "peer.delete", id=peer.id, name=peer.name)
            return peer

    # --- groups -----------------------------------------------------------------------------

    async def _group(self, s: AsyncSession, name: str, field: str = "group") -> Group:
        row = await s.scalar(select(Group).where(Group.name == name))
        if row is None:
            raise NotFound(f"no group {name!r}", field)
        return row

    async def create_group(self, actor: str, name: str, members: list[str]) -> Group:
        if name == ALL_GROUP:
            raise Conflict(f"{ALL_GROUP!r} is built in", "name")
        try:
            async with self.tx() as s:
                grp = Group(name=name)
                s.add(grp)
                await s.flush()
                for m in members:
                    peer = await self._peer(s, m, field="members")
                    s.add(GroupMember(group_id=grp.id, peer_id=peer.id))
                await self._bump(s)
                await self.audit(s, actor, "group.create", name=name, members=members)
                return grp
        except IntegrityError:
            raise Conflict(f"group {name!r} already exists", "name") from None

    async def list_groups(self) -> dict[str, list[str]]:
        async with self.reads() as s:
            out: dict[str, list[str]] = {
                g: [] for g in await s.scalars(select(Group.name).order_by(Group.name))
            }
            rows = await s.execute(
                select(Group.name, Peer.name)
                .join(GroupMember, GroupMember.group_id == Group.id)
                .join(Peer, Peer.id == GroupMember.peer_id)
                .order_by(Peer.name)
            )
            for g, p in rows:
                out[g].append(p)
            return out

    async def set_membership(self, actor: str, group: str, peer_ref: str, member: bool) -> None:
        if group == ALL_GROUP:
            raise Conflict(f"{ALL_GROUP!r} always holds every peer", "group")
        async with self.tx() as s:
            grp = await self._group(s, group)
            peer = await self._peer(s, peer_ref)
            exists = await s.get(GroupMember, (grp.id, peer.id))
            if member and exists is None:
                s.add(GroupMember(group_id=grp.id, peer_id=peer.id))
            elif not member and exists is not None:
                await s.delete(exists)
            else:
                return
            await self._bump(s)
            await self.audit(s, actor, "group.add" if member else "group.remove",
                             group=group, peer=peer.name)

    async def delete_group(self, actor: str, name: str) -> None:
        async with self.tx() as s:
            grp = await self._group(s, name)
            users = [
                p.name for p in await s.scalars(select(PolicyRow))
                if name in p.sources or name in p.destinations
            ] + [r.name for r in await s.scalars(select(RouteRow)) if r.router_group == name]
            if users:
                raise Conflict(f"group {name!r} is used by {', '.join(sorted(users))}", "name")
            await s.delete(grp)
            await self._bump(s)
            await self.audit(s, actor, "group.delete", name=name)

    # --- policies and routes ----------------------------------------------------------------

    async def list_policies(self) -> list[Policy]:
        async with self.reads() as s:
            return [policy_from_row(r) for r in await s.scalars(select(PolicyRow).order_by(
                PolicyRow.name))]

    async def list_routes(self) -> list[Route]:
        async with self.reads() as s:
            return [route_from_row(r) for r in await s.scalars(select(RouteRow).order_by(
                RouteRow.name))]

    async def replace_policy(
        self, actor: str, groups: dict[str, list[str]], policies: list[Policy],
        routes: list[Route] | None, source: str,
    ) -> int:
        """Set the listed groups' members and replace every policy (and every route, when
        given) in one transaction; groups not listed keep their members."""
        async with self.tx() as s:
            peers = {p.name: p.id for p in await s.scalars(select(Peer))}
            existing = {g.name: g for g in await s.scalars(select(Group))}
            for name, members in groups.items():
                grp = existing.get(name)
                if grp is None:
                    grp = Group(name=name)
                    s.add(grp)
                    await s.flush()
                await s.execute(delete(GroupMember).where(GroupMember.group_id == grp.id))
                for m in sorted(set(members)):
                    if m not in peers:
                        raise NotFound(f"no peer named {m!r}", f"groups.{name}")
                    s.add(GroupMember(group_id=grp.id, peer_id=peers[m]))
            await s.execute(delete(PolicyRow))
            s.add_all(PolicyRow(**policy_to_row_values(p)) for p in policies)
            if routes is not None:
                await s.execute(delete(RouteRow))
                s.add_all(RouteRow(**route_to_row_values(r)) for r in routes)
            rev = await self._bump(s)
            await self.audit(s, actor, "policy.apply", source=source,
                             policies=[p.name for p in policies], groups=sorted(groups))
            return rev

    async def upsert_route(self, actor: str, route: Route) -> None:
        async with self.tx() as s:
            row = await s.scalar(select(RouteRow).where(RouteRow.name == route.name))
            if row is None:
                s.add(RouteRow(**route_to_row_values(route)))
            else:
                for k, v in route_to_row_values(route).items():
                    setattr(row, k, v)
            await self._bump(s)
            await self.audit(s, actor, "route.upsert", name=route.name, prefix=route.prefix)

    async def delete_route(self, actor: str, name: str) -> None:
        async with self.tx() as s:
            row = await s.scalar(select(RouteRow).where(RouteRow.name == name))
            if row is None:
                raise NotFound(f"no route {name!r}", "name")
            await s.delete(row)
            await self._bump(s)
            await self.audit(s, actor, "route.delete", name=name)

    async def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        async with self.reads() as s:
            return list(await s.scalars(
                select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)))

    # --- snapshot for the compiler ----------------------------------------------------------

    async def load_state(self) -> tuple[int, MeshState]:
        """One consistent snapshot (single transaction) and the revision it reflects."""
        async with self.reads() as s, s.begin():
            rev = await self._counter(s, "revision")
            # Plain column rows, not ORM objects, and unchanged rows keep their PeerInfo:
            # a refresh of a large mesh should cost little more than the read itself.
            rows = await s.execute(select(Peer.id, Peer.name, Peer.public_key, Peer.overlay_ip,
                                          Peer.endpoints, Peer.listen_port))
            cache, peers = self._peer_infos, {}
            for row in rows:
                key = (*row[:4], tuple(row[4]), row[5])
                hit = cache.get(row[0])
                if hit is None or hit[0] != key:
                    info = PeerInfo(row[0], row[1], row[2], row[3],
                                    tuple(_endpoints_with_port(row[4], row[5])), row[5])
                    hit = cache[row[0]] = (key, info)
                peers[row[0]] = hit[1]
            for gone in cache.keys() - peers.keys():
                del cache[gone]
            groups: dict[str, set[int]] = {
                g: set() for g in await s.scalars(select(Group.name))
            }
            members = await s.execute(
                select(Group.name, GroupMember.peer_id)
                .join(GroupMember, GroupMember.group_id == Group.id)
            )
            for g, pid in members:
                groups[g].add(pid)
            frozen = {g: frozenset(m) for g, m in groups.items()}
            frozen[ALL_GROUP] = frozenset(peers)
            policies = tuple(policy_from_row(r) for r in await s.scalars(
                select(PolicyRow).order_by(PolicyRow.name)))
            routes = tuple(route_from_row(r) for r in await s.scalars(
                select(RouteRow).order_by(RouteRow.name)))
        return rev, MeshState(peers=peers, groups=frozen, policies=policies, routes=routes)


def _endpoints_with_port(endpoints: list[str], port: int) -> list[str]:
    """Endpoints are stored as reported; a bare address gets the peer's listen port."""
    out = []
    for e in endpoints:
        try:
            ip = ipaddress.ip_address(e)
        except ValueError:
            out.append(e)
            continue
        out.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    return out


__all__ = ["ALL_GROUP", "Conflict", "NotFound", "Refused", "Store", "StoreError"]
