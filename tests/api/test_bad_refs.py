"""Refs and numbers the admin routes must refuse cleanly: never a 500, always a problem body.

Found by a schema-driven fuzzer: huge or non-ASCII numeric refs and durations past what a
datetime can hold used to reach the database or the clock arithmetic unchecked."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from tests.api.test_api import enroll, make_key
from tests.conftest import ApiEnv
from wiremesh.store.tables import Peer

BAD_REFS = ["99999999999999999999", "9223372036854775808", "2147483648", "-1",
            "\u0661\u0662", "\u00b2",  # Arabic-Indic digits, superscript two
            "x" * 5000, "a%00b", "%E2%80%AE", "%20"]


def assert_problem(r, *statuses: int) -> dict:
    assert r.status_code in statuses, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    return r.json()


@pytest.mark.parametrize("ref", BAD_REFS)
async def test_peer_refs_never_500(api: ApiEnv, ref: str) -> None:
    for method in ("GET", "DELETE"):
        r = await api.client.request(method, f"/api/v1/peers/{ref}", headers=api.admin)
        assert_problem(r, 404, 422)
    r = await api.client.patch(f"/api/v1/peers/{ref}", json={"name": "x"}, headers=api.admin)
    assert_problem(r, 404, 422)
    r = await api.client.delete(f"/api/v1/groups/g/members/{ref}", headers=api.admin)
    assert_problem(r, 404, 422)
    r = await api.client.post("/api/v1/groups", json={"name": "g", "members": [ref]},
                              headers=api.admin)
    assert_problem(r, 404, 422)


@pytest.mark.parametrize("ref", BAD_REFS)
async def test_named_routes_never_500(api: ApiEnv, ref: str) -> None:
    for path in (f"/api/v1/groups/{ref}", f"/api/v1/routes/{ref}"):
        assert_problem(await api.client.delete(path, headers=api.admin), 404, 422)
    r = await api.client.post(f"/api/v1/groups/{ref}/members", json={"peer": "p"},
                              headers=api.admin)
    assert_problem(r, 404, 422)


async def test_peer_found_by_id_and_by_digit_name(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True)
    a = (await enroll(api, k["key"], "a")).json()
    b = (await enroll(api, k["key"], "b")).json()
    # New names are never all digits; one from before still names its peer.
    async with api.store.db.tx() as s:
        await s.execute(update(Peer).where(Peer.id == b["peer_id"]).values(name="123"))
    r = await api.client.get(f"/api/v1/peers/{a['peer_id']}", headers=api.admin)
    assert r.json()["name"] == "a"
    r = await api.client.get("/api/v1/peers/123", headers=api.admin)
    assert r.json()["id"] == b["peer_id"]


@pytest.mark.parametrize("key_id", ["99999999999999999999", "2147483648", "0", "-3", "\u0661"])
async def test_setup_key_ids_never_500(api: ApiEnv, key_id: str) -> None:
    r = await api.client.delete(f"/api/v1/setup-keys/{key_id}", headers=api.admin)
    assert_problem(r, 404, 422)


@pytest.mark.parametrize("seconds", [10**12, 10**20, 2**63, 0, -1])
async def test_setup_key_expiry_out_of_range(api: ApiEnv, seconds: int) -> None:
    r = await api.client.post("/api/v1/setup-keys", json={"name": "k", "expires_in_s": seconds},
                              headers=api.admin)
    body = assert_problem(r, 422)
    assert body["errors"][0]["field"] == "expires_in_s"
    assert "315360000" in body["errors"][0]["message"], body


@pytest.mark.parametrize("limit", [2**31, 10**20])
async def test_setup_key_usage_limit_out_of_range(api: ApiEnv, limit: int) -> None:
    r = await api.client.post("/api/v1/setup-keys", json={
        "name": "k", "reusable": True, "usage_limit": limit}, headers=api.admin)
    body = assert_problem(r, 422)
    assert body["errors"][0]["field"] == "usage_limit"


async def test_longest_expiry_accepted(api: ApiEnv) -> None:
    k = await make_key(api, expires_in_s=315360000)
    assert k["expires_at"] is not None and k["valid"]
