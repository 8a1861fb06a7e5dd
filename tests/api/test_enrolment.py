"""Enrolment is idempotent for the same key pair and setup key, and peer names are the
server's: unique, chosen by it when the one asked for is taken, or fixed by the setup key."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from tests.api.test_api import enroll, field_of, make_key, proven_body, pub
from tests.conftest import ApiEnv
from wiremesh.core.ipam import address_at, index_of
from wiremesh.store.common import now
from wiremesh.store.enrolment import RETRY_WINDOW
from wiremesh.store.tables import Meta, Peer


async def test_retried_enrolment_returns_the_same_peer(api: ApiEnv) -> None:
    # A client that timed out after the server committed asks again: same peer, a fresh
    # token, and the one-off key is not spent twice.
    k = await make_key(api)
    body = await proven_body(api, k["key"])
    first = await api.client.post("/api/v1/enroll", json=body)
    again = await api.client.post("/api/v1/enroll", json={**body, "hostname": "other"})
    assert first.status_code == 201 and again.status_code == 201, again.text
    a, b = first.json(), again.json()
    assert (b["peer_id"], b["name"], b["overlay_ip"]) == (a["peer_id"], a["name"],
                                                          a["overlay_ip"])
    assert b["token"] != a["token"]
    peers = (await api.client.get("/api/v1/peers", headers=api.admin)).json()
    assert len(peers) == 1
    keys = (await api.client.get("/api/v1/setup-keys", headers=api.admin)).json()
    assert keys[0]["used_count"] == 1
    # The new token is the peer's credential; the one never delivered is dead.
    assert await api.store.peers.for_token(b["token"]) is not None
    assert await api.store.peers.for_token(a["token"]) is None
    # And the used-up key still enrols no one else.
    assert (await enroll(api, k["key"])).status_code == 403


async def test_a_retry_without_the_private_key_takes_over_nothing(api: ApiEnv) -> None:
    # Public keys are in every netmap: someone else holding the same shared setup key must
    # not get the peer's credential by "retrying" its enrolment, with no proof or with a
    # proof made for another setup key, and the peer's own token keeps working.
    k, other = await make_key(api, reusable=True), await make_key(api, reusable=True)
    body = await proven_body(api, k["key"], "bob")
    first = await api.client.post("/api/v1/enroll", json=body)
    assert first.status_code == 201, first.text
    stolen = {**body, "hostname": "mallory"}
    del stolen["proof"]
    replayed = {**body, "setup_key": other["key"]}  # bob's proof is for the first key only
    forged = {**body, "proof": (await proven_body(api, k["key"]))["proof"]}  # someone else's
    for attempt in (stolen, replayed, forged):
        r = await api.client.post("/api/v1/enroll", json=attempt)
        assert r.status_code == 409 and field_of(r) == ["public_key"], r.text
    assert await api.store.peers.for_token(first.json()["token"]) is not None
    r = await api.client.post("/api/v1/enroll", json={**body, "proof": "not base64 at all!"})
    assert r.status_code == 409


async def test_retry_refused_with_another_key_or_too_late_or_revoked(api: ApiEnv) -> None:
    k1, k2 = await make_key(api, reusable=True), await make_key(api, reusable=True)
    body = await proven_body(api, k1["key"])
    assert (await api.client.post("/api/v1/enroll", json=body)).status_code == 201
    r = await api.client.post("/api/v1/enroll", json={**body, "setup_key": k2["key"]})
    assert r.status_code == 409 and field_of(r) == ["public_key"]
    async with api.store.db.tx() as s:
        await s.execute(update(Peer).values(created_at=now() - RETRY_WINDOW
                                            - timedelta(seconds=1)))
    r = await api.client.post("/api/v1/enroll", json=body)
    assert r.status_code == 409 and field_of(r) == ["public_key"]
    body2 = {**body, "public_key": pub()}
    assert (await api.client.post("/api/v1/enroll", json=body2)).status_code == 201
    await api.client.delete(f"/api/v1/setup-keys/{k1['id']}", headers=api.admin)
    r = await api.client.post("/api/v1/enroll", json=body2)
    assert r.status_code == 403 and field_of(r) == ["setup_key"]


async def test_taken_name_gets_a_server_chosen_one_and_says_so(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True)
    a = (await enroll(api, k["key"], "web")).json()
    b = (await enroll(api, k["key"], "web")).json()
    assert a["name"] == "web" and a["note"] is None
    assert b["name"] == "web-2" and "'web' is taken" in b["note"]
    long = "x" * 63
    c = (await enroll(api, k["key"], long)).json()
    d = (await enroll(api, k["key"], long)).json()
    assert c["name"] == long and d["name"] == "x" * 61 + "-2"


async def test_after_a_wrap_around_addresses_and_names_in_use_are_skipped(api: ApiEnv) -> None:
    # The store is asked about candidates only (not read whole): those it holds must be
    # skipped all the same.
    k = await make_key(api, reusable=True)
    got = [(await enroll(api, k["key"], n)).json() for n in ("web", "web-3", "a", "b")]
    assert (await api.client.delete("/api/v1/peers/a", headers=api.admin)).status_code == 204
    async with api.store.db.tx() as s:  # as after handing out the last of 4 million
        await s.execute(update(Meta).where(Meta.key == "ipam_next").values(value=1))
    c = (await enroll(api, k["key"], "web")).json()
    d = (await enroll(api, k["key"], "web")).json()
    assert c["overlay_ip"] == got[2]["overlay_ip"]
    assert d["overlay_ip"] == address_at(index_of(got[3]["overlay_ip"]) + 1)
    assert (c["name"], d["name"]) == ("web-2", "web-4")


async def test_setup_key_fixes_and_reserves_the_peer_name(api: ApiEnv) -> None:
    fixed = await make_key(api, peer_name="db1")
    assert fixed["peer_name"] == "db1"
    other = await make_key(api, reusable=True)
    # Another peer asking for the reserved name does not get it...
    squat = (await enroll(api, other["key"], "db1")).json()
    assert squat["name"] == "db1-2" and "taken" in squat["note"]
    # ...nor may an admin rename a peer to it, or reserve it twice.
    r = await api.client.patch(f"/api/v1/peers/{squat['peer_id']}", json={"name": "db1"},
                               headers=api.admin)
    assert r.status_code == 409 and "reserved by setup key" in r.json()["detail"]
    r = await api.client.post("/api/v1/setup-keys", json={"name": "k2", "peer_name": "db1"},
                              headers=api.admin)
    assert r.status_code == 409 and field_of(r) == ["peer_name"]
    # The key's own peer gets the name, whatever hostname it asks for.
    mine = (await enroll(api, fixed["key"], "localhost")).json()
    assert mine["name"] == "db1" and "names its peer 'db1'" in mine["note"]


async def test_peer_name_key_refusals(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True)
    await enroll(api, k["key"], "taken")
    r = await api.client.post("/api/v1/setup-keys", json={"name": "k", "peer_name": "taken"},
                              headers=api.admin)
    assert r.status_code == 409 and field_of(r) == ["peer_name"]
    r = await api.client.post("/api/v1/setup-keys", json={
        "name": "k", "peer_name": "x", "reusable": True}, headers=api.admin)
    assert r.status_code == 400 and field_of(r) == ["peer_name"]
    r = await api.client.post("/api/v1/setup-keys", json={"name": "k", "peer_name": "bad name"},
                              headers=api.admin)
    assert r.status_code == 422 and field_of(r) == ["peer_name"]
    # A revoked key holds its name no longer.
    held = await make_key(api, peer_name="free-again")
    await api.client.delete(f"/api/v1/setup-keys/{held['id']}", headers=api.admin)
    assert (await enroll(api, k["key"], "free-again")).json()["name"] == "free-again"


async def test_names_differing_in_case_only_are_the_same_name(api: ApiEnv) -> None:
    # DNS ignores case: a peer enrolled as WEB1 beside web1 would answer for web1's name.
    k = await make_key(api, reusable=True)
    a = (await enroll(api, k["key"], "web1")).json()
    b = (await enroll(api, k["key"], "WEB1")).json()
    assert a["name"] == "web1" and b["name"] == "web1-2" and "'web1' is taken" in b["note"]
    c = (await enroll(api, k["key"], "Laptop")).json()
    assert c["name"] == "laptop"
    r = await api.client.patch("/api/v1/peers/laptop", json={"name": "WEB1"}, headers=api.admin)
    assert r.status_code == 409 and field_of(r) == ["name"], r.text
    r = await api.client.post("/api/v1/setup-keys", json={"name": "k2", "peer_name": "WEB1-2"},
                              headers=api.admin)
    assert r.status_code == 409, r.text  # web1-2 is taken
    r = await api.client.post("/api/v1/setup-keys", json={"name": "k3", "peer_name": "WEB2"},
                              headers=api.admin)
    assert r.status_code == 201 and r.json()["peer_name"] == "web2", r.text


async def test_an_all_digit_name_is_refused_it_would_read_as_a_peer_id(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True)
    a = (await enroll(api, k["key"], "web")).json()
    for bad in ("3", str(a["peer_id"])):
        r = await enroll(api, k["key"], bad)
        assert r.status_code == 422 and field_of(r) == ["hostname"] and "peer id" in r.text
        r = await api.client.patch("/api/v1/peers/web", json={"name": bad}, headers=api.admin)
        assert r.status_code == 422 and field_of(r) == ["name"], r.text
    assert (await enroll(api, k["key"], "3com")).json()["name"] == "3com"
