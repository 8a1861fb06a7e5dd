"""Policy as code over HTTP: apply / diff / export a policy file, the reachability matrix,
`explain`, routes and the audit log."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import Field

from wiremesh.core.explain import explain, matrix
from wiremesh.core.models import MeshState, Route
from wiremesh.core.policy import PolicyCompiler
from wiremesh.core.policyfile import (
    MAX_BYTES,
    Plan,
    PolicyFile,
    TestFailure,
    export,
    parse,
    plan,
    run_tests,
)
from wiremesh.core.wire import Metric
from wiremesh.server.auth import admin_actor
from wiremesh.server.errors import problem
from wiremesh.server.hub import NetmapHub
from wiremesh.server.jsonbody import JsonRoute
from wiremesh.server.schemas import Name, NamePath, Strict
from wiremesh.store import Store
from wiremesh.store.common import aware

router = APIRouter(prefix="/api/v1", route_class=JsonRoute)


class PolicyText(Strict):
    text: str = Field(max_length=MAX_BYTES, description="The policy file, YAML or JSON")
    source: str = Field("policy", max_length=200, description="File name, for error messages")


class RouteIn(Strict):
    prefix: str = Field(description="IPv4 network, e.g. 198.18.1.0/24")
    router_group: Name
    metric: Metric = 100
    router_metrics: dict[str, Metric] = Field(
        default_factory=dict, description="per-router metric by peer name (a router of the "
                                          "route: a member of router_group)")
    masquerade: bool = True
    enabled: bool = True


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def _mesh(request: Request) -> MeshState:
    """The mesh at the store's latest revision, as the hub holds it: read incrementally,
    not loaded whole (550,000 peers: seconds of CPU)."""
    hub: NetmapHub = request.app.state.hub
    async with hub.settled() as (state, _):
        return state


@dataclass(frozen=True)
class _Evaluated:
    pf: PolicyFile
    plan: Plan
    failures: list[TestFailure]


def _evaluate(text: str, source: str, state: MeshState,
              compiler: PolicyCompiler | None) -> _Evaluated:
    pf = parse(text, state, source=source)
    new = pf.apply(state)
    return _Evaluated(pf, plan(state, new, compiler), run_tests(new, pf.tests))


async def _evaluated(request: Request, body: PolicyText) -> _Evaluated:
    """Parse, apply, plan and test the file in a worker thread: a large or hostile file must
    not hold up the event loop that serves every netmap stream. Against the hub's mesh and
    compiler, brought up to the store's revision: not a load and compile of the whole mesh
    per request (at 550,000 peers most of a policy apply's 47 s of CPU)."""
    async with request.app.state.hub.settled() as (state, compiler):
        work = asyncio.ensure_future(
            asyncio.to_thread(_evaluate, body.text, body.source, state, compiler))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The plan moves the hub's compiler away and back in that thread: a request given
            # up still holds the hub until it is done, or a refresh would move it meanwhile.
            await work
            raise


def _plan_json(p: Plan) -> dict[str, Any]:
    return {"empty": p.empty, "changes": p.lines(),
            "peers_affected": [c.name for c in p.peers]}


@router.post("/policy/diff")
async def policy_diff(body: PolicyText, request: Request,
                      _: str = Depends(admin_actor)) -> Any:
    """What applying the file would change, and which peers' netmaps."""
    ev = await _evaluated(request, body)
    return {**_plan_json(ev.plan), "test_failures": [f.message for f in ev.failures]}


@router.post("/policy/apply")
async def policy_apply(body: PolicyText, request: Request,
                       actor: str = Depends(admin_actor)) -> Any:
    """Validate, run the file's tests, then replace policies (all or nothing; a file without
    a policies section keeps them, as one without routes keeps the routes)."""
    ev = await _evaluated(request, body)
    pf, failures = ev.pf, ev.failures
    if failures:
        errors = [{"line": f.test.line, "field": "tests", "message": f.message}
                  for f in failures]
        return problem(422, "Policy tests failed",
                       f"{len(failures)} policy test(s) failed; nothing was changed", errors)
    rev = await _store(request).policies.replace(
        actor, {g: list(m) for g, m in pf.groups.items()},
        list(pf.policies) if pf.policies is not None else None,
        list(pf.routes) if pf.routes is not None else None, body.source)
    request.app.state.hub.poke()
    return {"revision": rev, "tests_passed": len(pf.tests), **_plan_json(ev.plan)}


@router.get("/policy/export", response_class=PlainTextResponse)
async def policy_export(request: Request, _: str = Depends(admin_actor)) -> str:
    state = await _mesh(request)
    return export(state)


@router.get("/policy/matrix")
async def policy_matrix(request: Request, _: str = Depends(admin_actor)) -> Any:
    async with request.app.state.hub.settled() as (state, compiler):
        names = {pid: p.name for pid, p in state.peers.items()}
        m = matrix(state, compiler.netmaps if compiler else None)
    return {
        "peers": sorted(names.values()),
        "pairs": [
            {"src": names[a], "dst": names[b],
             "allow": [{"proto": proto, "ports": [str(r) for r in ports]}
                       for proto, ports in access]}
            for (a, b), access in sorted(m.items(), key=lambda x: (names[x[0][0]],
                                                                   names[x[0][1]]))
        ],
    }


@router.get("/policy/explain")
async def policy_explain(
    request: Request,
    src: str = Query(..., description="source peer (name or id)"),
    dst: str = Query(..., description="destination peer (name or id), or an IPv4 address "
                     "outside the mesh (reached through routes and exit nodes)"),
    proto: Literal["all", "tcp", "udp", "icmp"] = Query("all"),
    port: int | None = Query(None, ge=1, le=65535),
    _: str = Depends(admin_actor),
) -> Any:
    state = await _mesh(request)
    try:
        ex = explain(state, src, dst, proto, port)
    except ValueError as e:
        return problem(400, "Bad request", str(e), [{"field": "src/dst", "message": str(e)}])
    return {"src": ex.src, "dst": ex.dst, "proto": ex.proto, "port": ex.port,
            "allowed": ex.allowed, "allowed_by": list(ex.allowed_by), "summary": ex.summary(),
            "verdicts": [{"policy": v.policy, "verdict": v.verdict, "reason": v.reason}
                         for v in ex.verdicts]}


def _route_json(r: Route) -> dict[str, Any]:
    return {"name": r.name, "prefix": r.prefix, "router_group": r.router_group,
            "metric": r.metric, "router_metrics": dict(r.router_metrics),
            "masquerade": r.masquerade, "enabled": r.enabled}


@router.get("/routes")
async def list_routes(request: Request, _: str = Depends(admin_actor)) -> Any:
    return [_route_json(r) for r in await _store(request).routes.all()]


@router.put("/routes/{name}")
async def put_route(name: NamePath, body: RouteIn, request: Request,
                    actor: str = Depends(admin_actor)) -> Any:
    """Create or replace a route; which peers may use it is decided by policy."""
    # The policy-file validator owns the rules for routes (prefix, names, metrics).
    doc = {"routes": [{"name": name, "prefix": body.prefix, "routers": body.router_group,
                       "metric": body.metric, "router_metrics": body.router_metrics,
                       "masquerade": body.masquerade, "enabled": body.enabled}]}
    state = await _mesh(request)
    pf = parse(json.dumps(doc), state, source="route")
    assert pf.routes
    await _store(request).routes.upsert(actor, pf.routes[0])
    request.app.state.hub.poke()
    return _route_json(pf.routes[0])


@router.delete("/routes/{name}", status_code=204)
async def delete_route(name: NamePath, request: Request, actor: str = Depends(admin_actor)) -> None:
    """Delete a route no policy uses (409 naming the policies that do)."""
    await _store(request).routes.delete(actor, name)
    request.app.state.hub.poke()


@router.get("/audit")
async def audit(request: Request, limit: int = Query(100, ge=1, le=10000),
                _: str = Depends(admin_actor)) -> Any:
    # SQLite hands back naive times (stored as UTC): said so, like every other time here.
    return [{"at": aware(e.at), "actor": e.actor, "action": e.action, "detail": e.detail}
            for e in await _store(request).audit.recent(limit)]
