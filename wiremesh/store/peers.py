"""Peers: enrolled machines, their credentials and the endpoints their agents report.
(Enrolment itself is store/enrolment.py.)"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from wiremesh.store import audit, lookup
from wiremesh.store.changes import bump
from wiremesh.store.common import hash_secret, now, same_secret
from wiremesh.store.database import Database
from wiremesh.store.errors import Conflict, NotFound
from wiremesh.store.routes import follow_routers
from wiremesh.store.setup_keys import check_name_free
from wiremesh.store.tables import Group, GroupMember, Peer


class Peers:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def all(self) -> list[Peer]:
        async with self.db.reads() as s:
            return list(await s.scalars(select(Peer).order_by(Peer.id)))

    async def groups(self) -> dict[int, list[str]]:
        """Each peer's groups (besides the implicit `all`), by peer id."""
        async with self.db.reads() as s:
            rows = await s.execute(
                select(GroupMember.peer_id, Group.name)
                .join(Group, Group.id == GroupMember.group_id)
            )
            out: dict[int, list[str]] = {}
            for pid, name in rows:
                out.setdefault(pid, []).append(name)
            return out

    async def exists(self, peer_id: int) -> bool:
        async with self.db.reads() as s:
            return await s.get(Peer, peer_id) is not None

    async def get(self, ref: str | int) -> Peer:
        async with self.db.reads() as s:
            return await lookup.peer(s, ref)

    async def for_token(self, token: str) -> Peer | None:
        h = hash_secret(token)
        async with self.db.reads() as s:
            row = await s.scalar(select(Peer).where(Peer.token_hash == h))
        if row is None or not same_secret(row.token_hash, h):
            return None
        return row

    async def report_endpoints(self, peer_id: int, endpoints: list[str], listen_port: int,
                               agent_version: str | None = None,
                               os_family: str | None = None) -> bool:
        """Record what the agent reported (its version and OS family when it says them);
        returns True when netmaps must change."""
        async with self.db.tx() as s:
            peer = await s.get(Peer, peer_id)
            if peer is None:
                raise NotFound(f"no peer with id {peer_id}")
            peer.last_seen = now()
            version = peer.agent_version if agent_version is None else agent_version
            os_ = peer.os_family if os_family is None else os_family
            if (peer.endpoints, peer.listen_port, peer.agent_version, peer.os_family) == (
                    endpoints, listen_port, version, os_):
                return False
            peer.endpoints, peer.listen_port = endpoints, listen_port
            peer.agent_version, peer.os_family = version, os_
            await bump(s, peers=[peer.id])
            return True

    async def rename(self, actor: str, ref: str | int, name: str) -> Peer:
        try:
            async with self.db.tx() as s:
                peer = await lookup.peer(s, ref)
                old = peer.name
                if name == old:
                    return peer
                await check_name_free(s, name, "name")
                peer.name = name
                await s.flush()
                await bump(s, peers=[peer.id], routes=await follow_routers(s, {old: name}))
                audit.record(s, actor, "peer.rename", id=peer.id, old=old, new=name)
                return peer
        except IntegrityError:
            raise Conflict(f"a peer named {name!r} already exists", "name") from None

    async def delete(self, actor: str, ref: str | int) -> Peer:
        async with self.db.tx() as s:
            peer = await lookup.peer(s, ref)
            await s.execute(delete(GroupMember).where(GroupMember.peer_id == peer.id))
            await s.delete(peer)
            await bump(s, peers=[peer.id], routes=await follow_routers(s, {peer.name: None}))
            audit.record(s, actor, "peer.delete", id=peer.id, name=peer.name)
            return peer
