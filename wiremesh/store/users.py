"""Users from the OpenID provider, their browser sessions, logins in progress and the
one-off setup keys a device login enrols with."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from wiremesh.core.wire import check_name
from wiremesh.store import audit
from wiremesh.store.changes import bump
from wiremesh.store.common import aware, hash_secret, new_secret, now
from wiremesh.store.database import Database
from wiremesh.store.errors import NotFound
from wiremesh.store.routes import follow_routers
from wiremesh.store.tables import GroupMember, LoginFlow, LoginSession, Peer, SetupKey, User

ROLES = ("admin", "auditor", "user")
# A group `g` in a user's groups claim makes their peers members of `idp.g` in policies.
USER_GROUP_PREFIX = "idp."
# A device login's setup key only has to outlive the agent's next request.
LOGIN_KEY_TTL = timedelta(minutes=10)


@dataclass(frozen=True)
class Identity:
    """Who the provider says logged in (validated ID-token claims)."""

    sub: str
    email: str
    name: str
    groups: tuple[str, ...]


def user_group(claim: str) -> str | None:
    """The policy group of a provider group, if its name can be one (a valid Name)."""
    try:
        return check_name(USER_GROUP_PREFIX + claim)
    except ValueError:
        return None


async def _peers_changed(s: AsyncSession, user_id: int) -> None:
    """A change of the user (groups, access) is a change of each of their peers."""
    pids = list(await s.scalars(select(Peer.id).where(Peer.user_id == user_id)))
    if pids:
        await bump(s, peers=pids)


class Users:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- users -------------------------------------------------------------------------------

    async def login(self, who: Identity, role: str, refresh_token: str | None) -> User:
        """Record a successful login at the provider: create or update the user (a user the
        provider vouches for again is enabled again)."""
        async with self.db.tx() as s:
            user = await s.scalar(select(User).where(User.sub == who.sub))
            if user is None:
                user = User(sub=who.sub, created_at=now(), disabled_reason="")
                s.add(user)
            netmap_change = (user.disabled_at is not None
                             or list(user.groups or []) != list(who.groups))
            user.email, user.name, user.groups, user.role = (
                who.email, who.name, list(who.groups), role)
            user.refresh_token = refresh_token or user.refresh_token
            user.last_login = user.checked_at = now()
            user.disabled_at, user.disabled_reason = None, ""
            await s.flush()
            audit.record(s, f"user:{who.sub}", "user.login", id=user.id, role=role,
                         groups=list(who.groups))
            if netmap_change:
                await _peers_changed(s, user.id)
            return user

    async def list_users(self) -> list[User]:
        async with self.db.reads() as s:
            return list(await s.scalars(select(User).order_by(User.id)))

    async def get_user(self, user_id: int) -> User:
        async with self.db.reads() as s:
            user = await s.get(User, user_id)
        if user is None:
            raise NotFound(f"no user with id {user_id}", "user")
        return user

    async def delete_user(self, actor: str, user_id: int) -> User:
        """Forget the user, their sessions, their peers and their unused login keys."""
        async with self.db.tx() as s:
            user = await s.get(User, user_id)
            if user is None:
                raise NotFound(f"no user with id {user_id}", "user")
            peers = {pid: name for pid, name in await s.execute(
                select(Peer.id, Peer.name).where(Peer.user_id == user_id))}
            await s.execute(delete(GroupMember).where(GroupMember.peer_id.in_(peers)))
            await s.execute(delete(Peer).where(Peer.user_id == user_id))
            await s.execute(delete(SetupKey).where(SetupKey.user_id == user_id))
            await s.delete(user)
            audit.record(s, actor, "user.delete", id=user_id, sub=user.sub,
                         peers=sorted(peers.values()))
            if peers:
                await bump(s, peers=peers, routes=await follow_routers(
                    s, dict.fromkeys(peers.values())))
            return user

    async def disable(self, user_id: int, reason: str) -> None:
        """The provider no longer vouches for the user: end their sessions; their peers
        leave every netmap (the next compile skips them)."""
        async with self.db.tx() as s:
            user = await s.get(User, user_id)
            if user is None or user.disabled_at is not None:
                return
            user.disabled_at, user.disabled_reason = now(), reason
            user.refresh_token = None
            await s.execute(update(LoginSession).where(LoginSession.user_id == user_id)
                            .values(revoked_at=now()))
            audit.record(s, "system", "user.disable", id=user_id, sub=user.sub,
                         reason=reason)
            await _peers_changed(s, user_id)

    async def due_for_check(self, older_than: timedelta) -> list[User]:
        """Enabled users with a refresh token not checked at the provider for a while."""
        cutoff = now() - older_than
        async with self.db.reads() as s:
            return list(await s.scalars(select(User).where(
                User.disabled_at.is_(None), User.refresh_token.is_not(None),
                (User.checked_at.is_(None)) | (User.checked_at < cutoff))))

    async def claim_check(self, user: User) -> bool:
        """Take `user` (from due_for_check) for a check at the provider; False when another
        replica took it first (two refreshes of one rotating token would void it)."""
        was = user.checked_at
        async with self.db.tx() as s:
            res = await s.execute(update(User).where(
                User.id == user.id,
                User.checked_at.is_(None) if was is None else User.checked_at == was,
            ).values(checked_at=now()).execution_options(synchronize_session=False))
        return bool(res.rowcount)  # type: ignore[attr-defined]

    async def checked(self, user_id: int, refresh_token: str | None,
                      groups: tuple[str, ...] | None) -> None:
        """The provider still vouches for the user (maybe with new groups)."""
        async with self.db.tx() as s:
            user = await s.get(User, user_id)
            if user is None:
                return
            user.checked_at = now()
            user.refresh_token = refresh_token or user.refresh_token
            if groups is not None and list(groups) != list(user.groups):
                user.groups = list(groups)
                audit.record(s, "system", "user.groups", id=user_id,
                             groups=list(groups))
                await _peers_changed(s, user_id)

    async def expire_peer_logins(self, since: datetime, until: datetime) -> int:
        """Peers whose login expired in (since, until]: a netmap change (they leave the
        mesh), though nothing was written."""
        expired = (Peer.login_expires_at > since) & (Peer.login_expires_at <= until)
        async with self.db.reads() as s:
            peers = {pid: name for pid, name in await s.execute(
                select(Peer.id, Peer.name).where(expired))}
        if peers:
            async with self.db.tx() as s:
                audit.record(s, "system", "peer.login_expired", peers=sorted(peers.values()))
                await bump(s, peers=peers)
        return len(peers)

    # --- browser sessions ------------------------------------------------------------------

    async def create_session(self, user_id: int, ttl: timedelta) -> str:
        token = new_secret("wms")
        async with self.db.tx() as s:
            s.add(LoginSession(token_hash=hash_secret(token), user_id=user_id,
                               created_at=now(), expires_at=now() + ttl))
        return token

    async def session_user(self, token: str) -> User | None:
        """The user of a live session (not expired, not revoked, user enabled)."""
        h = hash_secret(token)
        async with self.db.reads() as s:
            row = await s.execute(select(LoginSession, User)
                                  .join(User, User.id == LoginSession.user_id)
                                  .where(LoginSession.token_hash == h))
            hit = row.first()
        if hit is None:
            return None
        sess, user = hit
        expires = aware(sess.expires_at)
        if (not secrets.compare_digest(sess.token_hash, h) or sess.revoked_at is not None
                or expires is None or expires <= now() or user.disabled_at is not None):
            return None
        return user

    async def revoke_session(self, token: str) -> None:
        async with self.db.tx() as s:
            await s.execute(update(LoginSession)
                            .where(LoginSession.token_hash == hash_secret(token))
                            .values(revoked_at=now()))

    # --- logins in progress ------------------------------------------------------------------

    async def start_flow(self, kind: str, data: dict[str, Any], ttl: timedelta,
                         secret: str | None = None) -> str:
        """Remember `data` until the login answers; returns the secret that finds it (a new
        one unless given: a browser login is found by its OAuth state)."""
        secret = secret or secrets.token_urlsafe(32)
        async with self.db.tx() as s:
            await s.execute(delete(LoginFlow).where(LoginFlow.expires_at <= now()))
            s.add(LoginFlow(key_hash=hash_secret(secret), kind=kind, data=data,
                            expires_at=now() + ttl))
        return secret

    async def flow(self, kind: str, secret: str, consume: bool) -> dict[str, Any] | None:
        """The data of a live login of `kind`; `consume` ends it (a state is used once)."""
        async with self.db.tx() as s:
            row = await s.scalar(select(LoginFlow).where(
                LoginFlow.key_hash == hash_secret(secret), LoginFlow.kind == kind))
            if row is None:
                return None
            expires = aware(row.expires_at)
            if consume or (expires is not None and expires <= now()):
                await s.delete(row)
            return dict(row.data) if expires is not None and expires > now() else None

    # --- device login -> one-off setup key -------------------------------------------------

    async def login_key(self, user: User, hostname: str) -> str:
        """A one-off setup key whose peer belongs to `user`."""
        key = new_secret("wmk")
        async with self.db.tx() as s:
            s.add(SetupKey(name=f"login-{user.id}-{hostname}"[:128],
                           key_hash=hash_secret(key), key_prefix=key[:10], reusable=False,
                           usage_limit=1, used_count=0, expires_at=now() + LOGIN_KEY_TTL,
                           revoked=False, auto_groups=[], created_at=now(),
                           user_id=user.id))
            audit.record(s, f"user:{user.sub}", "user.device_login", id=user.id,
                         hostname=hostname)
        return key
