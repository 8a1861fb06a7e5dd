"""Rows by the references admins write (a peer by id or name, a group by name), or NotFound
naming the field that held the reference."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from wiremesh.core.policy import ALL_GROUP
from wiremesh.store.common import as_id
from wiremesh.store.errors import Conflict, NotFound
from wiremesh.store.tables import Group, Peer


async def peer(s: AsyncSession, ref: str | int, field: str = "peer") -> Peer:
    row = None
    pid = as_id(ref)
    if pid is not None:
        row = await s.get(Peer, pid)
    if row is None:
        row = await s.scalar(select(Peer).where(Peer.name == str(ref)))
    if row is None:
        raise NotFound(f"no peer {ref!r}", field)
    return row


async def group(s: AsyncSession, name: str, field: str = "group") -> Group:
    """A group admins made: the built-in `all` has no row to change ("no group 'all'" made
    admins think it was gone)."""
    if name == ALL_GROUP:
        raise Conflict(f"{ALL_GROUP!r} is built in: it always holds every peer", field)
    row = await s.scalar(select(Group).where(Group.name == name))
    if row is None:
        raise NotFound(f"no group {name!r}", field)
    return row
