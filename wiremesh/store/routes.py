"""Routes: prefixes behind router peers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from wiremesh.core.models import Route
from wiremesh.store import audit
from wiremesh.store.changes import bump
from wiremesh.store.database import Database
from wiremesh.store.errors import NotFound
from wiremesh.store.groups import policies_using, refuse_in_use
from wiremesh.store.tables import RouteRow


def from_row(r: RouteRow) -> Route:
    return Route(
        name=r.name, prefix=r.prefix, router_group=r.router_group, metric=r.metric,
        router_metrics=tuple(sorted(r.router_metrics.items())), masquerade=r.masquerade,
        enabled=r.enabled,
    )


def row_values(r: Route) -> dict[str, Any]:
    return dict(name=r.name, prefix=r.prefix, router_group=r.router_group, metric=r.metric,
                router_metrics=dict(r.router_metrics), masquerade=r.masquerade,
                enabled=r.enabled)


async def follow_routers(s: AsyncSession, renamed: Mapping[str, str | None]) -> list[str]:
    """Move per-router metrics to routers' new names (None: the router is gone, its metric
    too); returns the routes changed. Keyed by name, a metric would otherwise be left on a
    name nobody has (an exported policy file then names an unknown peer) or on a peer that
    takes the name later."""
    changed = []
    for row in await s.scalars(select(RouteRow)):
        hit = [n for n in row.router_metrics if n in renamed]
        if hit:
            metrics = dict(row.router_metrics)
            for n in hit:
                metric, new = metrics.pop(n), renamed[n]
                if new is not None:
                    metrics[new] = metric
            row.router_metrics = metrics
            changed.append(row.name)
    return changed


class Routes:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def all(self) -> list[Route]:
        async with self.db.reads() as s:
            return [from_row(r) for r in await s.scalars(select(RouteRow).order_by(
                RouteRow.name))]

    async def upsert(self, actor: str, route: Route) -> None:
        async with self.db.tx() as s:
            row = await s.scalar(select(RouteRow).where(RouteRow.name == route.name))
            if row is None:
                s.add(RouteRow(**row_values(route)))
            else:
                for k, v in row_values(route).items():
                    setattr(row, k, v)
            await bump(s, routes=[route.name])
            audit.record(s, actor, "route.upsert", name=route.name, prefix=route.prefix)

    async def delete(self, actor: str, name: str) -> None:
        async with self.db.tx() as s:
            row = await s.scalar(select(RouteRow).where(RouteRow.name == name))
            if row is None:
                raise NotFound(f"no route {name!r}", "name")
            refuse_in_use(f"route {name!r}", {"policies": await policies_using(
                s, lambda p: name in p.destination_routes)})
            await s.delete(row)
            await bump(s, routes=[name])
            audit.record(s, actor, "route.delete", name=name)
