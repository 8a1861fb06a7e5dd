"""The audit log: who changed what, written in the change's own transaction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from wiremesh.store.common import now
from wiremesh.store.database import Database
from wiremesh.store.tables import AuditEntry


def record(s: AsyncSession, actor: str, action: str, **detail: Any) -> None:
    s.add(AuditEntry(at=now(), actor=actor, action=action, detail=detail))


async def record_many(s: AsyncSession, entries: Iterable[tuple[str, str, dict[str, Any]]],
                      ) -> None:
    """Entries (actor, action, detail) in one statement, for a change of many rows."""
    at = now()
    rows = [{"at": at, "actor": a, "action": act, "detail": d} for a, act, d in entries]
    if rows:
        await s.execute(insert(AuditEntry), rows)


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def recent(self, limit: int = 100) -> list[AuditEntry]:
        async with self.db.reads() as s:
            return list(await s.scalars(
                select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)))
