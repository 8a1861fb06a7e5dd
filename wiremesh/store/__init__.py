"""The store: one repository per entity over one database (see `Store`)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from wiremesh.store import audit, server_key
from wiremesh.store.admin_tokens import AdminTokens, new_admin_token
from wiremesh.store.audit import AuditLog
from wiremesh.store.changes import Changes
from wiremesh.store.database import Database
from wiremesh.store.enrolment import Enrolment
from wiremesh.store.gateways import Gateways
from wiremesh.store.groups import Groups
from wiremesh.store.mesh import MeshReader
from wiremesh.store.peers import Peers
from wiremesh.store.policies import DEFAULT_POLICY, Policies, row_values
from wiremesh.store.routes import Routes
from wiremesh.store.setup_keys import SetupKeys
from wiremesh.store.tables import Meta, PolicyRow
from wiremesh.store.users import Users


class Store:
    """Every repository over one database: a new entity gets its module in this package
    and an attribute here."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.db = db = Database(engine)
        self.admin_tokens = AdminTokens(db)
        self.audit = AuditLog(db)
        self.changes = Changes(db)
        self.enrolment = Enrolment(db)
        self.gateways = Gateways(db)
        self.groups = Groups(db)
        self.mesh = MeshReader(db)
        self.peers = Peers(db)
        self.policies = Policies(db)
        self.routes = Routes(db)
        self.setup_keys = SetupKeys(db)
        self.users = Users(db)

    async def bootstrap(self) -> str | None:
        """First start on an empty store: seed counters and the default policy, and return a
        new admin token (shown once). Later starts return None."""
        async with self.db.tx() as s:
            if await s.scalar(select(func.count()).select_from(Meta)):
                return None
            s.add_all([Meta(key="revision", value=1), Meta(key="ipam_next", value=1)])
            s.add(PolicyRow(**row_values(DEFAULT_POLICY)))
            row, token = new_admin_token("initial", "admin")
            s.add(row)
            audit.record(s, "system", "bootstrap")
            return token

    async def signing_key(self, generate: Callable[[], bytes]) -> bytes:
        return await server_key.signing_key(self.db, generate)
