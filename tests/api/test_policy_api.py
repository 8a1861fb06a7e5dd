"""Policy as code over the HTTP API against a real store."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.api.test_api import enroll, make_key
from tests.conftest import ApiEnv, billion_laughs
from wiremesh.core.policy import compile_netmaps
from wiremesh.server import routes_policy

EXAMPLE = (Path(__file__).parents[2] / "examples" / "policy.yaml").read_text()
NAMES = ["alice", "bob", "web1", "db1", "r1", "r2"]


async def _mesh(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True)
    for n in NAMES:
        assert (await enroll(api, k["key"], n)).status_code == 201


async def _export(api: ApiEnv) -> str:
    return (await api.client.get("/api/v1/policy/export", headers=api.admin)).text


async def test_apply_diff_export_explain_matrix(api: ApiEnv) -> None:
    await _mesh(api)
    h = api.admin
    d = (await api.client.post("/api/v1/policy/diff", json={"text": EXAMPLE},
                               headers=h)).json()
    assert "- policy default" in d["changes"] and d["test_failures"] == []
    assert set(d["peers_affected"]) == set(NAMES)
    r = await api.client.post("/api/v1/policy/apply", json={"text": EXAMPLE,
                                                            "source": "policy.yaml"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["tests_passed"] == 5
    # Applying the same file again changes nothing.
    again = (await api.client.post("/api/v1/policy/diff", json={"text": EXAMPLE},
                                   headers=h)).json()
    assert again["empty"] is True
    exported = yaml.safe_load(await _export(api))
    assert {p["name"] for p in exported["policies"]} == {"devs-to-web", "web-to-db",
                                                        "ping-everyone", "devs-lab"}
    ex = (await api.client.get("/api/v1/policy/explain", headers=h, params={
        "src": "alice", "dst": "web1", "proto": "tcp", "port": 443})).json()
    assert ex["allowed"] is True and ex["allowed_by"] == ["devs-to-web"]
    ex = (await api.client.get("/api/v1/policy/explain", headers=h, params={
        "src": "alice", "dst": "db1", "proto": "tcp", "port": 5432})).json()
    assert ex["allowed"] is False and "web-to-db" in ex["summary"]
    # Without a protocol: may alice open anything at all to web1?
    r = await api.client.get("/api/v1/policy/explain", headers=h,
                             params={"src": "alice", "dst": "web1"})
    assert r.status_code == 200, r.text
    assert r.json()["proto"] == "all" and "devs-to-web" in r.json()["allowed_by"]
    # An address outside the mesh: which policy opens a route to it, through which routers.
    ex = (await api.client.get("/api/v1/policy/explain", headers=h, params={
        "src": "alice", "dst": "198.18.1.20", "proto": "tcp", "port": 22})).json()
    assert ex["allowed_by"] == ["devs-lab"]
    assert any("through route lab-net" in v["reason"] for v in ex["verdicts"])
    ex = (await api.client.get("/api/v1/policy/explain", headers=h, params={
        "src": "alice", "dst": "203.0.113.10"})).json()
    assert ex["allowed"] is False  # no route (no exit node) covers it
    m = (await api.client.get("/api/v1/policy/matrix", headers=h)).json()
    pairs = {(p["src"], p["dst"]): p["allow"] for p in m["pairs"]}
    assert pairs[("web1", "db1")] == [{"proto": "tcp", "ports": ["5432"]}]
    assert ("db1", "web1") not in pairs
    routes = (await api.client.get("/api/v1/routes", headers=h)).json()
    assert routes[0]["prefix"] == "198.18.1.0/24"
    audit = (await api.client.get("/api/v1/audit", headers=h)).json()
    assert audit[0]["action"] == "policy.apply" and audit[0]["detail"]["source"] == "policy.yaml"
    # The compiled netmaps follow: db1 learns web1 only, and only for tcp/5432.
    await api.hub.refresh()
    db1 = next(nm for nm in api.hub.current.values() if nm.name == "db1")
    web1_ip = next(nm.overlay_ip for nm in api.hub.current.values() if nm.name == "web1")
    tcp_from_web = [r for r in db1.inbound if r.src == web1_ip]
    assert [(r.proto, [str(p) for p in r.ports]) for r in tcp_from_web] == [("tcp", ["5432"])]


async def test_invalid_files_change_nothing(api: ApiEnv) -> None:
    await _mesh(api)
    h = api.admin
    before = await _export(api)
    bad = {
        "unknown group": EXAMPLE.replace("sources: [web]", "sources: [nosuch]"),
        "bad port": EXAMPLE.replace("ports: [5432]", "ports: [70000]"),
        "bad proto": EXAMPLE.replace("proto: icmp", "proto: gre"),
        "duplicate": EXAMPLE.replace("name: web-to-db", "name: devs-to-web"),
        "malformed": EXAMPLE + "\n  - [unclosed",
        "unknown peer": EXAMPLE.replace("db: [db1]", "db: [db9]"),
    }
    for what, text in bad.items():
        r = await api.client.post("/api/v1/policy/apply", json={"text": text}, headers=h)
        assert r.status_code == 422, (what, r.text)
        err = r.json()["errors"][0]
        assert err["line"] is not None, (what, err)
        assert err["field"] or what == "malformed", (what, err)
    failing = EXAMPLE.replace("port: 5432, expect: deny", "port: 5432, expect: allow")
    r = await api.client.post("/api/v1/policy/apply", json={"text": failing}, headers=h)
    assert r.status_code == 422 and r.json()["title"] == "Policy tests failed"
    assert "alice" in r.json()["errors"][0]["message"]
    assert await _export(api) == before


async def test_routes_api(api: ApiEnv) -> None:
    await _mesh(api)
    h = api.admin
    await api.client.post("/api/v1/groups", json={"name": "routers", "members": ["r1", "r2"]},
                          headers=h)
    body = {"prefix": "198.18.2.0/24", "router_group": "routers", "router_metrics": {"r2": 5}}
    r = await api.client.put("/api/v1/routes/lab2", json=body, headers=h)
    assert r.status_code == 200, r.text
    r = await api.client.put("/api/v1/routes/lab3", json={**body, "prefix": "nope"}, headers=h)
    assert r.status_code == 422
    r = await api.client.put("/api/v1/routes/lab3", json={**body, "router_group": "zz"},
                             headers=h)
    assert r.status_code == 422 and "unknown group" in r.json()["detail"]
    assert [x["name"] for x in (await api.client.get("/api/v1/routes", headers=h)).json()] == [
        "lab2"]
    assert (await api.client.delete("/api/v1/routes/lab2", headers=h)).status_code == 204
    assert (await api.client.delete("/api/v1/routes/lab2", headers=h)).status_code == 404
    r = await api.client.get("/api/v1/policy/explain", headers=h,
                             params={"src": "nobody", "dst": "r1"})
    assert r.status_code == 400 and "no peer named 'nobody'" in r.json()["detail"]


async def test_oversized_and_hostile_files_are_refused_with_a_problem(api: ApiEnv) -> None:
    h = api.admin
    r = await api.client.post("/api/v1/policy/diff", headers=h,
                              json={"text": "#" * (3 << 20)})
    assert r.status_code == 413 and "larger than 2097152 bytes" in r.json()["detail"]
    r = await api.client.post("/api/v1/policy/diff", headers=h,
                              json={"text": "groups: {}\n" + "#" * (1 << 20)})
    assert r.status_code == 422 and "text" in r.json()["detail"]
    r = await api.client.post("/api/v1/policy/apply", headers=h,
                              json={"text": billion_laughs(9), "source": "lol.yaml"})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("lol.yaml: line 6: refused: more than 100000 values")


async def test_a_diff_given_up_holds_the_hub_until_its_plan_is_done(
        api: ApiEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan moves the hub's compiler away and back in a worker thread: a request
    cancelled meanwhile must not let a refresh move it at the same time."""
    await _mesh(api)
    entered, release = threading.Event(), threading.Event()
    real = routes_policy._evaluate

    def held(*args: Any) -> Any:
        entered.set()
        release.wait(10)
        return real(*args)

    monkeypatch.setattr(routes_policy, "_evaluate", held)
    task = asyncio.create_task(api.client.post("/api/v1/policy/diff", json={"text": EXAMPLE},
                                               headers=api.admin))
    await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    await asyncio.sleep(0.1)
    refresh = asyncio.create_task(api.hub.refresh())
    await asyncio.sleep(0.1)
    assert not refresh.done()  # waits for the plan
    release.set()
    await asyncio.wait_for(refresh, 10)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert dict(api.hub.compiler.netmaps) == compile_netmaps(api.hub.state)
