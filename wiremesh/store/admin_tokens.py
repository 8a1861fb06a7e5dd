"""Admin tokens: the credentials of the admin API (stored hashed)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from wiremesh.store import audit
from wiremesh.store.common import aware, hash_secret, new_secret, now, same_secret
from wiremesh.store.database import Database
from wiremesh.store.errors import Conflict, NotFound
from wiremesh.store.tables import AdminToken, User


def new_admin_token(name: str, role: str) -> tuple[AdminToken, str]:
    """A row to add and its secret (shown once)."""
    token = new_secret("wma")
    return AdminToken(name=name, token_hash=hash_secret(token), created_at=now(),
                      role=role), token


class AdminTokens:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def for_token(self, token: str) -> AdminToken | None:
        """The live admin token with this secret (read on every request, so a revocation
        through any replica holds at once everywhere)."""
        h = hash_secret(token)
        async with self.db.reads() as s:
            row = await s.scalar(select(AdminToken).where(AdminToken.token_hash == h))
        if row is None or row.revoked_at is not None or not same_secret(row.token_hash, h):
            return None
        return row

    async def create(self, actor: str, name: str, role: str) -> tuple[AdminToken, str]:
        async with self.db.tx() as s:
            same = await s.scalar(select(AdminToken).where(AdminToken.name == name).limit(1))
            if same is not None and same.revoked_at is None:
                raise Conflict(f"an admin token named {name!r} already exists", "name")
            if same is not None:
                # The audit log names a token's actions `admin:NAME`: a name used again
                # would make the revoked token's entries read as the new one's.
                raise Conflict(f"an admin token named {name!r} existed (revoked): names "
                               "are never reused, so the audit log's admin:NAME names one "
                               "token; choose another name", "name")
            row, token = new_admin_token(name, role)
            s.add(row)
            audit.record(s, actor, "admin_token.create", name=name, role=role)
        return row, token

    async def all(self) -> list[AdminToken]:
        async with self.db.reads() as s:
            return list(await s.scalars(select(AdminToken).order_by(AdminToken.id)))

    async def revoke(self, actor: str, name: str) -> AdminToken:
        async with self.db.tx() as s:
            row = await s.scalar(select(AdminToken).where(AdminToken.name == name).order_by(
                AdminToken.revoked_at.is_(None).desc()).limit(1))
            if row is None:
                raise NotFound(f"no admin token named {name!r}", "name")
            if row.revoked_at is not None:
                raise Conflict(f"admin token {name!r} is already revoked (at "
                               f"{aware(row.revoked_at):%Y-%m-%d %H:%M:%S %Z})", "name")
            if row.role == "admin" and not await _other_admins(s, row.id):
                # Nothing could administer the mesh any more: the initial token is printed
                # only for an empty store.
                raise Conflict(f"{name!r} is the last admin token and no user is an admin: "
                               "create another admin token first", "name")
            row.revoked_at = now()
            audit.record(s, actor, "admin_token.revoke", name=name)
            return row


async def _other_admins(s: AsyncSession, token_id: int) -> bool:
    """Whether some live admin token other than `token_id`, or an admin user, remains."""
    token = await s.scalar(select(AdminToken.id).where(
        AdminToken.id != token_id, AdminToken.role == "admin",
        AdminToken.revoked_at.is_(None)).limit(1))
    user = await s.scalar(select(User.id).where(
        User.role == "admin", User.disabled_at.is_(None)).limit(1))
    return token is not None or user is not None
