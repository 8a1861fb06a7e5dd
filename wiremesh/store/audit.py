"""The audit log: who changed what, written in the change's own transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from wiremesh.store.common import now
from wiremesh.store.database import Database
from wiremesh.store.tables import AuditEntry


def record(s: AsyncSession, actor: str, action: str, **detail: Any) -> None:
    s.add(AuditEntry(at=now(), actor=actor, action=action, detail=detail))


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def recent(self, limit: int = 100) -> list[AuditEntry]:
        async with self.db.reads() as s:
            return list(await s.scalars(
                select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)))
