"""The mesh as the policy compiler sees it, read from the store in one snapshot."""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import select

from wiremesh.core.models import MeshState, PeerInfo
from wiremesh.core.policy import ALL_GROUP
from wiremesh.store import policies, routes
from wiremesh.store.changes import Changes
from wiremesh.store.common import counter
from wiremesh.store.database import Database
from wiremesh.store.tables import Group, GroupMember, Peer, PolicyRow, RouteRow


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


class MeshReader:
    """What the netmap hub reads: snapshots of the mesh, the revision, and whether a peer
    exists."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._changes = Changes(db)
        self._peer_infos: dict[int, tuple[tuple[Any, ...], PeerInfo]] = {}

    async def revision(self) -> int:
        return await self._changes.revision()

    async def peer_exists(self, peer_id: int) -> bool:
        async with self.db.reads() as s:
            return await s.get(Peer, peer_id) is not None

    async def load_state(self) -> tuple[int, MeshState]:
        """One consistent snapshot (single transaction) and the revision it reflects."""
        async with self.db.reads() as s, s.begin():
            rev = await counter(s, "revision")
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
            pols = tuple(policies.from_row(r) for r in await s.scalars(
                select(PolicyRow).order_by(PolicyRow.name)))
            rts = tuple(routes.from_row(r) for r in await s.scalars(
                select(RouteRow).order_by(RouteRow.name)))
        return rev, MeshState(peers=peers, groups=frozen, policies=pols, routes=rts)
