"""Nothing the API changes leaves a name dangling: a route a policy uses, a group a usable
setup key fills, a router's per-router metric; a file without policies keeps them. Each
refusal names what is in the way and changes nothing."""

from __future__ import annotations

import yaml
from sqlalchemy import select

from tests.api.test_api import field_of, make_key
from tests.api.test_policy_api import EXAMPLE, _export, _mesh
from tests.conftest import ApiEnv
from wiremesh.store.tables import ChangeRow, PolicyRow


async def _apply(api: ApiEnv, text: str):
    return await api.client.post("/api/v1/policy/apply", json={"text": text}, headers=api.admin)


async def _routes(api: ApiEnv) -> list[dict]:
    r = await api.client.get("/api/v1/routes", headers=api.admin)
    return r.json()


async def test_a_route_a_policy_uses_cannot_be_deleted(api: ApiEnv) -> None:
    await _mesh(api)
    assert (await _apply(api, EXAMPLE)).status_code == 200
    before = await _export(api)
    r = await api.client.delete("/api/v1/routes/lab-net", headers=api.admin)
    assert r.status_code == 409 and field_of(r) == ["name"]
    assert r.json()["detail"] == "route 'lab-net' is used by policies devs-lab"
    assert await _export(api) == before
    # What export writes still applies; without the policy the route can go.
    assert (await _apply(api, before)).status_code == 200
    no_lab = yaml.safe_load(before)
    no_lab["policies"] = [p for p in no_lab["policies"] if p["name"] != "devs-lab"]
    assert (await _apply(api, yaml.safe_dump(no_lab))).status_code == 200
    r = await api.client.delete("/api/v1/routes/lab-net", headers=api.admin)
    assert r.status_code == 204


async def test_a_group_a_usable_setup_key_fills_cannot_be_deleted(api: ApiEnv) -> None:
    h = api.admin
    assert (await api.client.post("/api/v1/groups", json={"name": "tmpg2"},
                                  headers=h)).status_code == 201
    k = await make_key(api, name="ci", reusable=True, auto_groups=["tmpg2"])
    r = await api.client.delete("/api/v1/groups/tmpg2", headers=h)
    assert r.status_code == 409 and field_of(r) == ["name"]
    assert r.json()["detail"] == f"group 'tmpg2' is used by setup keys ci (id {k['id']})"
    groups = (await api.client.get("/api/v1/groups", headers=h)).json()
    assert "tmpg2" in [g["name"] for g in groups]
    # A revoked key never enrols again (and keys are never deleted): it does not hold it.
    await api.client.delete(f"/api/v1/setup-keys/{k['id']}", headers=h)
    assert (await api.client.delete("/api/v1/groups/tmpg2", headers=h)).status_code == 204


async def test_a_group_lists_everything_that_uses_it(api: ApiEnv) -> None:
    await _mesh(api)
    assert (await _apply(api, EXAMPLE)).status_code == 200
    await make_key(api, name="devkey", auto_groups=["devs"])
    r = await api.client.delete("/api/v1/groups/devs", headers=api.admin)
    assert r.status_code == 409
    assert r.json()["detail"].startswith("group 'devs' is used by policies devs-lab, "
                                         "devs-to-web, ping-everyone; setup keys devkey (id ")


async def test_a_per_router_metric_names_a_router_of_the_route(api: ApiEnv) -> None:
    await _mesh(api)
    h = api.admin
    await api.client.post("/api/v1/groups", json={"name": "routers", "members": ["r1", "r2"]},
                          headers=h)
    body = {"prefix": "198.18.2.0/24", "router_group": "routers",
            "router_metrics": {"alice": 5}}
    r = await api.client.put("/api/v1/routes/r12", json=body, headers=h)
    assert r.status_code == 422, r.text
    assert [(e["field"], e["message"]) for e in r.json()["errors"]] == [(
        "routes[0].router_metrics.alice", "'alice' is not a router of route 'r12' (not in its "
        "router group 'routers'): a per-router metric is for the route's routers")]
    assert await _routes(api) == []
    r = await api.client.put("/api/v1/routes/r12", json={**body, "router_metrics": {"r1": 5}},
                             headers=h)
    assert r.status_code == 200, r.text
    # r1 stays a router while its metric is there: removing it first would leave the metric
    # stored for a peer that does not route (and an export that cannot be applied).
    r = await api.client.delete("/api/v1/groups/routers/members/r1", headers=h)
    assert r.status_code == 409 and field_of(r) == ["peer"]
    assert r.json()["detail"] == ("router 'r1' of group 'routers' is used by the per-router "
                                  "metric of routes r12")
    assert (await api.client.delete("/api/v1/groups/routers/members/r2",
                                    headers=h)).status_code == 200
    assert (await api.client.post("/api/v1/policy/apply", json={"text": await _export(api)},
                                  headers=h)).status_code == 200


async def test_route_and_per_router_metrics_have_the_same_bounds(api: ApiEnv) -> None:
    await _mesh(api)
    h = api.admin
    await api.client.post("/api/v1/groups", json={"name": "routers", "members": ["r1"]},
                          headers=h)
    body = {"prefix": "198.18.2.0/24", "router_group": "routers"}
    r = await api.client.put("/api/v1/routes/r", headers=h, json={
        **body, "metric": 1_000_000, "router_metrics": {"r1": 1_000_000}})
    assert r.status_code == 200, r.text
    for bad in ({"metric": 1_000_001}, {"router_metrics": {"r1": 1_000_001}}):
        r = await api.client.put("/api/v1/routes/r", json={**body, **bad}, headers=h)
        assert r.status_code == 422, r.text
        assert "less than or equal to 1000000" in r.text
    assert (await _routes(api))[0]["metric"] == 1_000_000


async def test_a_file_of_groups_only_keeps_the_policies(api: ApiEnv) -> None:
    await _mesh(api)
    assert (await _apply(api, EXAMPLE)).status_code == 200
    before = yaml.safe_load(await _export(api))
    # Its tests run against the policies it keeps: bob leaves devs, so devs-to-web denies him.
    text = ("groups:\n  devs: [alice]\ntests:\n"
            "  - {src: bob, dst: web1, proto: tcp, port: 443, expect: allow}\n")
    r = await _apply(api, text)
    assert r.status_code == 422 and "bob -> web1" in r.json()["errors"][0]["message"]
    d = (await api.client.post("/api/v1/policy/diff", json={"text": text},
                               headers=api.admin)).json()
    assert [c for c in d["changes"] if not c.startswith("  netmap")] == ["~ group devs"]
    assert "bob" in d["peers_affected"]
    async with api.store.db.reads() as s:
        rows = set(await s.scalars(select(PolicyRow.id)))
    r = await _apply(api, text.replace("expect: allow", "expect: deny"))
    assert r.status_code == 200, r.text
    async with api.store.db.reads() as s:  # not even written again: no hub rereads them
        assert set(await s.scalars(select(ChangeRow.kind).where(
            ChangeRow.revision == r.json()["revision"]))) == {"group"}
        assert set(await s.scalars(select(PolicyRow.id))) == rows
    after = yaml.safe_load(await _export(api))
    assert after["policies"] == before["policies"] and after["groups"]["devs"] == ["alice"]
    # An explicit empty list still removes them all.
    assert (await _apply(api, "policies: []\n")).status_code == 200
    assert yaml.safe_load(await _export(api))["policies"] == []


async def test_ports_yaml_1_1_reads_as_numbers_are_refused(api: ApiEnv) -> None:
    await _mesh(api)
    before = await _export(api)
    for port in ("22:22", "010", "0b11", "1_000"):
        text = ("policies:\n  - {name: a, sources: [all], destinations: [all], proto: tcp,\n"
                f"     ports: [{port}]}}\n")
        r = await _apply(api, text)
        assert r.status_code == 422, (port, r.text)
        err = r.json()["errors"][0]
        assert (err["line"], err["field"]) == (3, "policies[0].ports[0]"), (port, err)
    assert await _export(api) == before



async def test_a_router_metric_follows_its_router_renamed_or_deleted(api: ApiEnv) -> None:
    # Metrics are kept by router name: one left on the old name would make the exported file
    # name an unknown peer, or apply to whoever takes the name next.
    await _mesh(api)
    assert (await _apply(api, EXAMPLE)).status_code == 200
    [lab] = [r for r in await _routes(api) if r["name"] == "lab-net"]
    assert lab["router_metrics"] == {"r1": 50}
    r = await api.client.patch("/api/v1/peers/r1", json={"name": "r1b"}, headers=api.admin)
    assert r.status_code == 200, r.text
    [lab] = [r for r in await _routes(api) if r["name"] == "lab-net"]
    assert lab["router_metrics"] == {"r1b": 50}
    assert (await _apply(api, await _export(api))).status_code == 200
    assert (await api.client.delete("/api/v1/peers/r1b", headers=api.admin)).status_code == 204
    [lab] = [r for r in await _routes(api) if r["name"] == "lab-net"]
    assert lab["router_metrics"] == {}
    r = await _apply(api, await _export(api))
    assert r.status_code == 200, r.text
    await api.hub.refresh()  # the hub read the routes the log named
    assert [x.router_metrics for x in api.hub.state.routes if x.name == "lab-net"] == [()]
