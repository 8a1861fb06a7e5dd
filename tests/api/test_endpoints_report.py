"""Endpoints no peer can be sent to (loopback, unspecified, broadcast, multicast, overlay):
an agent that reports one is refused naming the entry and nothing it sent is kept; the
address a request came from, when it is such an address, is left out and the report stands."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import update

from tests.api.test_api import enroll, field_of, make_key
from tests.conftest import ApiEnv
from wiremesh.store.changes import bump
from wiremesh.store.tables import Peer

BAD_REPORT = {"listen_port": 51820, "endpoints": [
    "1.2.3.4", "0.0.0.0:1", "255.255.255.255:1", "100.64.0.3:51820", "127.0.0.1:9",
    "224.0.0.1:5"]}


async def _two_peers(api: ApiEnv) -> tuple[dict, dict]:
    k = await make_key(api, reusable=True)
    a = await enroll(api, k["key"], "a", endpoints=["198.51.100.7:51820"])
    b = await enroll(api, k["key"], "b")
    assert a.status_code == b.status_code == 201, (a.text, b.text)
    return a.json(), b.json()


async def _netmap_endpoints(api: ApiEnv, of: dict, seen_by: dict) -> tuple[str, ...]:
    await api.hub.refresh()
    key = (await api.client.get(f"/api/v1/peers/{of['peer_id']}",
                                headers=api.admin)).json()["public_key"]
    return tuple(api.hub.current[seen_by["peer_id"]].peers[key].endpoints)


async def test_a_report_with_unusable_endpoints_is_refused_and_nothing_kept(
        api: ApiEnv) -> None:
    a, b = await _two_peers(api)
    auth = {"Authorization": f"Bearer {a['token']}"}
    stored = (await api.client.get("/api/v1/peers/a", headers=api.admin)).json()["endpoints"]
    pushed = await _netmap_endpoints(api, a, b)
    assert stored == ["198.51.100.7:51820", "192.0.2.50"] and "198.51.100.7:51820" in pushed
    r = await api.client.put("/api/v1/agent/endpoints", json=BAD_REPORT, headers=auth)
    assert r.status_code == 422, r.text
    # A bare address is the listen port (as `wiremesh up --endpoint IP` documents): the
    # first bad entry is the second, and each bad one is named with why.
    errors = r.json()["errors"]
    assert field_of(r) == [f"endpoints.{i}" for i in range(1, 6)], r.text
    assert "'0.0.0.0:1'" in errors[0]["message"] and "unspecified" in errors[0]["message"]
    for e, why in zip(errors, ["unspecified", "broadcast", "overlay", "loopback",
                               "multicast"], strict=True):
        assert why in e["message"], e
    after = (await api.client.get("/api/v1/peers/a", headers=api.admin)).json()["endpoints"]
    assert after == stored
    assert await _netmap_endpoints(api, a, b) == pushed
    # Each on its own is refused too, at enrolment as in a report.
    k = await make_key(api, reusable=True)
    for bad in BAD_REPORT["endpoints"][1:]:
        r = await api.client.put("/api/v1/agent/endpoints", headers=auth,
                                 json={"listen_port": 51820, "endpoints": [bad]})
        assert r.status_code == 422 and field_of(r) == ["endpoints.0"], r.text
        r = await enroll(api, k["key"], "c", endpoints=["198.51.100.9:1", bad])
        assert r.status_code == 422 and field_of(r) == ["endpoints.1"], r.text
    names = [p["name"] for p in (await api.client.get("/api/v1/peers",
                                                      headers=api.admin)).json()]
    assert sorted(names) == ["a", "b"]


async def test_a_bare_address_gets_the_listen_port(api: ApiEnv) -> None:
    a, b = await _two_peers(api)
    r = await api.client.put("/api/v1/agent/endpoints",
                             headers={"Authorization": f"Bearer {a['token']}"},
                             json={"listen_port": 51900, "endpoints": ["198.51.100.8"]})
    assert r.status_code == 200, r.text
    assert await _netmap_endpoints(api, a, b) == ("198.51.100.8:51900", "192.0.2.50:51900")


@pytest.mark.parametrize("client_host", ["127.0.0.1", "::1", "100.64.0.9"])
async def test_an_observed_address_no_peer_can_use_is_skipped(api: ApiEnv,
                                                              client_host: str) -> None:
    # An agent on the server's host (or every agent, behind a proxy there that says nothing)
    # comes from loopback; one reaching the server through the mesh from its overlay address.
    _, b = await _two_peers(api)
    k = await make_key(api, reusable=True)
    transport = httpx.ASGITransport(app=api.app, client=(client_host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://wm") as local:
        r = await enroll(ApiEnv(local, api.app, api.admin, api.db_url), k["key"], "c",
                         endpoints=["198.51.100.9:51820"])
        assert r.status_code == 201, r.text
        c = r.json()
        r = await local.put("/api/v1/agent/endpoints",
                            headers={"Authorization": f"Bearer {c['token']}"},
                            json={"listen_port": 51820, "endpoints": ["198.51.100.9:51820"],
                                  "candidates": [
                                      {"endpoint": "100.101.102.103:51820", "kind": "local"},
                                      {"endpoint": "192.168.7.2:51820", "kind": "local"}]})
        assert r.status_code == 200 and r.json()["observed"] is None, r.text
    got = (await api.client.get("/api/v1/peers/c", headers=api.admin)).json()["endpoints"]
    assert got == ["198.51.100.9:51820", "192.168.7.2:51820"]
    assert await _netmap_endpoints(api, c, b) == tuple(got)


async def test_unusable_endpoints_stored_before_are_not_sent(api: ApiEnv) -> None:
    # A server from before this check stored whatever agents reported: netmaps leave such
    # an endpoint out rather than send every peer to the holder's loopback or overlay.
    a, b = await _two_peers(api)
    async with api.store.db.tx() as s:
        await s.execute(update(Peer).where(Peer.id == a["peer_id"]).values(
            endpoints=["127.0.0.1:9", "100.64.0.3:51820", "198.51.100.7:51820"]))
        await bump(s, peers=[a["peer_id"]])
    assert await _netmap_endpoints(api, a, b) == ("198.51.100.7:51820",)
