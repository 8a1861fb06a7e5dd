"""The JIT gateway's known-peer feed over the HTTP API against a real store."""

from __future__ import annotations

import asyncio
import time

from tests.api.test_api import enroll, make_key
from tests.conftest import ApiEnv

POLICY = """
groups:
  clients: [c1, c2]
  gws: [gw]
policies:
  - name: clients-to-gateway
    sources: [clients]
    destinations: [gws]
"""


async def _gateway(api: ApiEnv) -> dict:
    k = await make_key(api, role="gateway")
    r = await enroll(api, k["key"], "gw")
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def _three_agents_a_gateway_and_policy(api: ApiEnv) -> dict:
    """Agents c1-c3, a gateway (its auth header is returned) and POLICY applied."""
    agents = await make_key(api, reusable=True)
    for name in ("c1", "c2", "c3"):
        assert (await enroll(api, agents["key"], name)).status_code == 201
    h = await _gateway(api)
    assert (await api.client.post("/api/v1/policy/apply", json={"text": POLICY},
                                  headers=api.admin)).status_code == 200
    return h


async def _pages(api: ApiEnv, h: dict, limit: int) -> tuple[int, dict[int, tuple[str, str]]]:
    out: dict[int, tuple[str, str]] = {}
    after, first_rev = 0, None
    while True:
        r = await api.client.get("/api/v1/gateway/known", headers=h,
                                 params={"after": after, "limit": limit})
        assert r.status_code == 200, r.text
        body = r.json()
        first_rev = first_rev or body["revision"]
        out.update({pid: (key, ip) for pid, key, ip in body["peers"]})
        if body["next_after"] is None:
            return first_rev, out
        after = body["next_after"]


async def test_only_gateways_read_the_feed_and_pages_cover_the_admitted_peers(
        api: ApiEnv) -> None:
    agents = await make_key(api, reusable=True)
    agent = await enroll(api, agents["key"], "c1")
    for name in ("c2", "c3"):
        assert (await enroll(api, agents["key"], name)).status_code == 201
    r = await api.client.get("/api/v1/gateway/known",
                             headers={"Authorization": f"Bearer {agent.json()['token']}"})
    assert r.status_code == 403 and "gateway setup key" in r.json()["detail"]
    h = await _gateway(api)
    # The default policy (all -> all): every peer but the gateway itself, in pages of two.
    _, known = await _pages(api, h, limit=2)
    assert len(known) == 3
    assert (await api.client.post("/api/v1/policy/apply", json={"text": POLICY},
                                  headers=api.admin)).status_code == 200
    _, known = await _pages(api, h, limit=2)
    names = {p["public_key"]: p["name"] for p in
             (await api.client.get("/api/v1/peers", headers=api.admin)).json()}
    assert sorted(names[k] for k, _ in known.values()) == ["c1", "c2"]
    assert all(ip.endswith("/32") or "/" not in ip for _, ip in known.values())


async def test_a_gateway_is_no_mesh_peer(api: ApiEnv) -> None:
    """Its population comes from the feed: the hub compiles no netmap for it (which would
    list every admitted peer) and lists it in nobody's."""
    agents = await make_key(api, reusable=True)
    c1 = (await enroll(api, agents["key"], "c1")).json()
    assert (await enroll(api, agents["key"], "c2")).status_code == 201
    h = await _gateway(api)
    assert (await api.client.post("/api/v1/policy/apply", json={"text": POLICY},
                                  headers=api.admin)).status_code == 200
    await api.hub.refresh()
    peers = (await api.client.get("/api/v1/peers", headers=api.admin)).json()
    gw = next(p for p in peers if p["name"] == "gw")
    assert gw["id"] not in api.hub.current
    assert c1["peer_id"] in api.hub.current
    assert all(gw["public_key"] not in nm.peers for nm in api.hub.current.values())
    _, known = await _pages(api, h, limit=100)
    assert len(known) == 2


async def test_changes_report_removals_and_wait_for_them(api: ApiEnv) -> None:
    h = await _three_agents_a_gateway_and_policy(api)
    rev, known = await _pages(api, h, limit=100)
    ids = {p["name"]: p["id"] for p in
           (await api.client.get("/api/v1/peers", headers=api.admin)).json()}
    assert set(known) == {ids["c1"], ids["c2"]}
    # Nothing changed: the long poll waits, then says so.
    r = await api.client.get("/api/v1/gateway/changes", headers=h,
                             params={"since": rev, "wait": 0.2})
    assert r.json() == {"revision": rev, "upsert": [], "remove": [], "groups": [],
                        "reset": False}

    async def removal_later() -> float:
        await asyncio.sleep(0.3)
        r = await api.client.delete("/api/v1/groups/clients/members/c1", headers=api.admin)
        assert r.status_code == 200, r.text
        return time.monotonic()

    task = asyncio.create_task(removal_later())
    r = await api.client.get("/api/v1/gateway/changes", headers=h,
                             params={"since": rev, "wait": 10})
    answered = time.monotonic()
    committed = await task
    body = r.json()
    assert body["remove"] == [ids["c1"]] and body["upsert"] == [] and not body["reset"]
    assert answered - committed < 1.0
    # Back in the group, then deleted: an upsert, then a removal.
    await api.client.post("/api/v1/groups/clients/members", json={"peer": "c1"},
                          headers=api.admin)
    r = await api.client.get("/api/v1/gateway/changes", headers=h,
                             params={"since": body["revision"], "wait": 0})
    assert [u[0] for u in r.json()["upsert"]] == [ids["c1"]]
    assert (await api.client.delete(f"/api/v1/peers/{ids['c2']}",
                                    headers=api.admin)).status_code in (200, 204)
    r = await api.client.get("/api/v1/gateway/changes", headers=h,
                             params={"since": r.json()["revision"], "wait": 0})
    assert r.json()["remove"] == [ids["c2"]]
    # A policy change cannot be told peer by peer: sync again.
    r2 = await api.client.post("/api/v1/policy/apply",
                               json={"text": POLICY.replace("[c1, c2]", "[c1, c3]")},
                               headers=api.admin)
    assert r2.status_code == 200
    r = await api.client.get("/api/v1/gateway/changes", headers=h,
                             params={"since": r.json()["revision"], "wait": 0})
    assert r.json()["reset"] is True


STAFF_TOO = """
policies:
  - name: clients-to-gateway
    sources: [clients]
    destinations: [gws]
  - name: staff-to-gateway
    sources: [staff]
    destinations: [gws]
"""


async def test_a_policy_change_comes_as_a_delta_to_a_gateway_that_says_what_it_held(
        api: ApiEnv) -> None:
    h = await _three_agents_a_gateway_and_policy(api)
    r = await api.client.post("/api/v1/groups", json={"name": "staff", "members": ["c3"]},
                              headers=api.admin)
    assert r.status_code in (200, 201), r.text
    ids = {p["name"]: p["id"] for p in
           (await api.client.get("/api/v1/peers", headers=api.admin)).json()}
    rev, known = await _pages(api, h, limit=100)
    assert set(known) == {ids["c1"], ids["c2"]}

    async def apply(text: str, held: list[str] | None, since: int) -> dict:
        r = await api.client.post("/api/v1/policy/apply", json={"text": text},
                                  headers=api.admin)
        assert r.status_code == 200, r.text
        params: dict = {"since": since, "wait": 0}
        if held is not None:
            params["held"] = held
        r = await api.client.get("/api/v1/gateway/changes", headers=h, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    # A new policy lets `staff` in: its members come, nobody else moves.
    body = await apply(STAFF_TOO, ["clients"], rev)
    assert not body["reset"] and body["groups"] == ["clients", "staff"]
    assert [u[0] for u in body["upsert"]] == [ids["c3"]] and body["remove"] == []
    # And out again.
    body = await apply("policies: []\n", body["groups"], body["revision"])
    assert not body["reset"] and body["groups"] == []
    assert body["upsert"] == [] and sorted(body["remove"]) == sorted(
        [ids["c1"], ids["c2"], ids["c3"]])
    # Without `held` the server cannot tell what left; nor when an admitted group's
    # members were replaced wholesale: a reset then.
    assert (await apply(STAFF_TOO, None, body["revision"]))["reset"] is True
    rev = (await api.client.get("/api/v1/gateway/changes", headers=h,
                                params={"since": 0, "wait": 0})).json()["revision"]
    body = await apply(POLICY.replace("[c1, c2]", "[c1]"), ["clients", "staff"], rev)
    assert body["reset"] is True
