"""HTTP API against a real store (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from tests.conftest import ApiEnv
from wiremesh.core.wire import agent_mac_key, enroll_proof
from wiremesh.store.tables import SetupKey
from wiremesh.wg.keys import generate_private_key, public_key_of


def pub() -> str:
    return public_key_of(generate_private_key())


async def proven_body(api: ApiEnv, setup_key: str, hostname: str = "h") -> dict[str, str]:
    """An enrolment body with the proof that the caller holds the private key."""
    private = generate_private_key()
    stream_key = (await api.client.get("/api/v1/server-key")).json()["stream_key"]
    return {"setup_key": setup_key, "public_key": public_key_of(private), "hostname": hostname,
            "proof": enroll_proof(agent_mac_key(private, stream_key), setup_key)}


async def make_key(api: ApiEnv, **kw) -> dict:
    r = await api.client.post("/api/v1/setup-keys", json={"name": "k", **kw}, headers=api.admin)
    assert r.status_code == 201, r.text
    return r.json()


async def enroll(api: ApiEnv, key: str, hostname: str = "host", **kw):
    body = {"setup_key": key, "public_key": pub(), "hostname": hostname, **kw}
    return await api.client.post("/api/v1/enroll", json=body)


def field_of(r) -> list[str]:
    return [e["field"] for e in r.json().get("errors", [])]


async def test_admin_auth_required(api: ApiEnv) -> None:
    assert (await api.client.get("/api/v1/peers")).status_code == 401
    r = await api.client.get("/api/v1/peers", headers={"Authorization": "Bearer wma_nope"})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    r = await api.client.get("/api/v1/peers", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    assert (await api.client.get("/api/v1/peers", headers=api.admin)).status_code == 200


async def test_admin_token_only_on_first_start(api: ApiEnv) -> None:
    assert await api.store.bootstrap() is None


async def test_secrets_are_stored_hashed(api: ApiEnv) -> None:
    k = await make_key(api)
    r = await enroll(api, k["key"])
    rows = await api.store.setup_keys.all()
    assert k["key"] not in {row.key_hash for row in rows}
    peer = await api.store.peers.get(r.json()["peer_id"])
    assert peer.token_hash != r.json()["token"] and len(peer.token_hash) == 64
    listed = (await api.client.get("/api/v1/setup-keys", headers=api.admin)).json()
    assert listed[0]["key"] is None and listed[0]["prefix"] == k["key"][:10]


async def test_one_off_key_is_used_up(api: ApiEnv) -> None:
    k = await make_key(api)
    assert (await enroll(api, k["key"])).status_code == 201
    r = await enroll(api, k["key"])
    assert r.status_code == 403 and "used up" in r.json()["detail"]
    assert field_of(r) == ["setup_key"]


async def test_reusable_key_with_limit(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True, usage_limit=2)
    assert (await enroll(api, k["key"])).status_code == 201
    assert (await enroll(api, k["key"])).status_code == 201
    assert (await enroll(api, k["key"])).status_code == 403


async def test_revoked_invalid_and_expired_keys_refused(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True)
    r = await api.client.delete(f"/api/v1/setup-keys/{k['id']}", headers=api.admin)
    assert r.json()["revoked"] is True
    r = await enroll(api, k["key"])
    assert r.status_code == 403 and "revoked" in r.json()["detail"]

    r = await enroll(api, "wmk_not-a-real-key")
    assert r.status_code == 403 and "not valid" in r.json()["detail"]

    k2 = await make_key(api, reusable=True, expires_in_s=3600)
    async with api.store.db.tx() as s:
        await s.execute(update(SetupKey).where(SetupKey.id == k2["id"])
                        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    r = await enroll(api, k2["key"])
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    listed = {x["id"]: x for x in (await api.client.get("/api/v1/setup-keys",
                                                        headers=api.admin)).json()}
    assert listed[k2["id"]]["valid"] is False


@pytest.mark.parametrize("bad,field", [
    ({"public_key": "abc"}, "public_key"),
    ({"public_key": "A" * 43 + "="}, "public_key"),
    ({"public_key": "A" * 44}, "public_key"),
    ({"public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}, "public_key"),
    ({"hostname": "bad host!"}, "hostname"),
    ({"hostname": ""}, "hostname"),
    ({"listen_port": 0}, "listen_port"),
    ({"endpoints": ["not-an-ip:51820"]}, "endpoints"),
    ({"endpoints": ["192.0.2.1:99999"]}, "endpoints"),
    # Arabic-Indic digits: int() and str.isdigit() take them, wireguard-go does not.
    ({"endpoints": ["192.0.2.1:\u0665\u0661\u0668\u0662\u0660"]}, "endpoints"),
    ({"endpoints": ["\u0661\u0669\u0662.0.2.1:51820"]}, "endpoints"),
    ({"endpoints": ["192.0.2.1:51820\nendpoint=203.0.113.9:1"]}, "endpoints"),
    ({"hostname": "h\nremove=true"}, "hostname"),
    ({"hostname": "h\u0665"}, "hostname"),
    # Names its peers could not resolve (a peer's name is also its DNS name).
    ({"hostname": "box."}, "hostname"),
    ({"hostname": "a..b"}, "hostname"),
    ({"hostname": "box-"}, "hostname"),
    ({"surprise": 1}, "surprise"),
])
async def test_bad_enrolment_bodies(api: ApiEnv, bad: dict, field: str) -> None:
    k = await make_key(api, reusable=True)
    body = {"setup_key": k["key"], "public_key": pub(), "hostname": "h", **bad}
    r = await api.client.post("/api/v1/enroll", json=body)
    assert r.status_code == 422, r.text
    assert any(f.startswith(field) for f in field_of(r)), r.json()
    assert (await api.client.get("/api/v1/peers", headers=api.admin)).json() == []


async def test_not_json_body(api: ApiEnv) -> None:
    r = await api.client.post("/api/v1/enroll", content=b"{nope",
                              headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["title"] == "Invalid request"


async def test_a_key_given_twice_is_refused_not_read_as_the_last(api: ApiEnv) -> None:
    json_type = {"content-type": "application/json"}
    r = await api.client.post("/api/v1/setup-keys", headers={**api.admin, **json_type},
                              content=b'{"name": "k", "reusable": true, "name": "other"}')
    assert r.status_code == 422, r.text
    assert "duplicate key 'name'" in r.json()["detail"] and field_of(r) == ["body"]
    assert (await api.client.get("/api/v1/setup-keys", headers=api.admin)).json() == []
    k = await make_key(api, reusable=True)
    body = ('{"setup_key": "%s", "public_key": "%s", "hostname": "h", '
            '"endpoints": ["192.0.2.1:1"], "listen_port": 1, "listen_port": 2}')
    r = await api.client.post("/api/v1/enroll", headers=json_type,
                              content=(body % (k["key"], pub())).encode())
    assert r.status_code == 422 and "duplicate key 'listen_port'" in r.text, r.text
    assert (await api.client.get("/api/v1/peers", headers=api.admin)).json() == []


async def test_duplicate_public_key_refused(api: ApiEnv) -> None:
    # The same key pair with the same setup key is a retry (test_enrolment); with another
    # setup key it is a second peer claiming an enrolled identity.
    k1, k2 = await make_key(api, reusable=True), await make_key(api, reusable=True)
    key = pub()
    body = {"setup_key": k1["key"], "public_key": key, "hostname": "h"}
    assert (await api.client.post("/api/v1/enroll", json=body)).status_code == 201
    r = await api.client.post("/api/v1/enroll", json={**body, "setup_key": k2["key"]})
    assert r.status_code == 409 and field_of(r) == ["public_key"]


async def test_same_key_written_differently_is_the_same_key(api: ApiEnv) -> None:
    """Base64 spells 32 bytes several ways (padding bits); only the canonical spelling is a
    key, so the same key cannot be enrolled twice under two spellings."""
    k = await make_key(api, reusable=True)
    key = pub()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = key[:42] + alphabet[alphabet.index(key[42]) ^ 1] + "="
    assert base64.b64decode(twin) == base64.b64decode(key)
    r = await api.client.post("/api/v1/enroll",
                              json={"setup_key": k["key"], "public_key": twin, "hostname": "h"})
    assert r.status_code == 422 and field_of(r) == ["public_key"], r.text
    assert "canonical" in r.text
    assert (await api.client.get("/api/v1/peers", headers=api.admin)).json() == []


async def test_non_ascii_endpoint_report_never_stored_or_pushed(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True)
    a = (await enroll(api, k["key"], "a", endpoints=["192.0.2.1:51820"])).json()
    b = (await enroll(api, k["key"], "b")).json()
    for bad in ["192.0.2.1:\u0665\u0661\u0668\u0662\u0660", "192.0.2.1:51820\n",
                "[fd00::1\n]:1"]:
        r = await api.client.put("/api/v1/agent/endpoints",
                                 json={"listen_port": 51820, "endpoints": [bad]},
                                 headers={"Authorization": f"Bearer {a['token']}"})
        assert r.status_code == 422 and field_of(r)[0].startswith("endpoints"), r.text
    await api.hub.refresh()
    a_pub = (await api.client.get("/api/v1/peers/a", headers=api.admin)).json()["public_key"]
    assert api.hub.current[b["peer_id"]].peers[a_pub].endpoints[0] == "192.0.2.1:51820"


async def test_endpoints_are_stored_in_canonical_form(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True)
    r = await enroll(api, k["key"], "a", endpoints=["[FD00:0::1]:51820", "192.0.2.1"])
    assert r.status_code == 201, r.text
    got = (await api.client.get("/api/v1/peers/a", headers=api.admin)).json()["endpoints"]
    assert got[:2] == ["[fd00::1]:51820", "192.0.2.1"]


async def test_bad_setup_key_requests(api: ApiEnv) -> None:
    for body, field in [({"name": "x", "usage_limit": -1}, "usage_limit"),
                        ({"name": "x", "usage_limit": 5}, "usage_limit"),
                        ({"name": "x y"}, "name"),
                        ({"name": "x", "expires_in_s": 0}, "expires_in_s"),
                        ({"name": "x", "auto_groups": ["nosuch"]}, "auto_groups"),
                        ({"name": "x", "peer_name": "web."}, "peer_name")]:
        r = await api.client.post("/api/v1/setup-keys", json=body, headers=api.admin)
        assert r.status_code in (400, 404, 422), r.text
        assert field in field_of(r), r.json()
    r = await api.client.delete("/api/v1/setup-keys/999", headers=api.admin)
    assert r.status_code == 404


async def test_ipam_unique_and_not_reissued(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True)
    ips = [(await enroll(api, k["key"], f"h{i}")).json()["overlay_ip"] for i in range(5)]
    assert len(set(ips)) == 5 and all(ip.startswith("100.") for ip in ips)
    await api.client.delete("/api/v1/peers/h0", headers=api.admin)
    new = (await enroll(api, k["key"], "h5")).json()["overlay_ip"]
    assert new not in ips[1:]


async def test_peer_names_are_made_unique(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True)
    names = [(await enroll(api, k["key"], "box")).json()["name"] for _ in range(3)]
    assert names == ["box", "box-2", "box-3"]


async def test_peer_get_rename_delete(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True)
    a = (await enroll(api, k["key"], "a")).json()
    b = (await enroll(api, k["key"], "b")).json()
    r = await api.client.get(f"/api/v1/peers/{a['peer_id']}", headers=api.admin)
    assert r.json()["name"] == "a" and r.json()["groups"] == ["all"]
    assert "192.0.2.50" in r.json()["endpoints"]  # the address the request came from
    r = await api.client.patch("/api/v1/peers/a", json={"name": "b"}, headers=api.admin)
    assert r.status_code == 409 and field_of(r) == ["name"]
    for bad in ("alpha.", "al..pha", "alpha-"):
        r = await api.client.patch("/api/v1/peers/a", json={"name": bad}, headers=api.admin)
        assert r.status_code == 422 and field_of(r) == ["name"], r.text
        assert "DNS name" in r.text
    r = await api.client.patch("/api/v1/peers/a", json={"name": "alpha"}, headers=api.admin)
    assert r.json()["name"] == "alpha"
    assert (await api.client.get("/api/v1/peers/nosuch", headers=api.admin)).status_code == 404
    await api.hub.refresh()
    b_pub = (await api.client.get("/api/v1/peers/b", headers=api.admin)).json()["public_key"]
    assert b_pub in api.hub.current[a["peer_id"]].peers
    a_pub = (await api.client.get("/api/v1/peers/alpha", headers=api.admin)).json()["public_key"]
    assert a_pub in api.hub.current[b["peer_id"]].peers
    assert (await api.client.delete("/api/v1/peers/alpha", headers=api.admin)).status_code == 204
    await api.hub.refresh()
    assert a_pub not in api.hub.current[b["peer_id"]].peers
    assert a["peer_id"] not in api.hub.current
    r = await api.client.put("/api/v1/agent/endpoints", json={"listen_port": 1},
                             headers={"Authorization": f"Bearer {a['token']}"})
    assert r.status_code == 401


async def test_groups(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True)
    await enroll(api, k["key"], "a")
    await enroll(api, k["key"], "b")
    h = api.admin
    r = await api.client.post("/api/v1/groups", json={"name": "dev", "members": ["a"]}, headers=h)
    assert r.status_code == 201 and r.json()["members"] == ["a"]
    r = await api.client.post("/api/v1/groups", json={"name": "dev"}, headers=h)
    assert r.status_code == 409
    r = await api.client.post("/api/v1/groups", json={"name": "x", "members": ["zz"]}, headers=h)
    assert r.status_code == 404 and field_of(r) == ["members"]
    assert (await api.client.get("/api/v1/groups", headers=h)).json()[1]["name"] == "dev"
    r = await api.client.post("/api/v1/groups/dev/members", json={"peer": "b"}, headers=h)
    assert r.json()["members"] == ["a", "b"] and r.json()["changed"] is True
    r = await api.client.delete("/api/v1/groups/dev/members/a", headers=h)
    assert r.json()["members"] == ["b"] and r.json()["changed"] is True
    # Doing it again changes nothing, and says so (the CLI said "removed a from dev").
    r = await api.client.delete("/api/v1/groups/dev/members/a", headers=h)
    assert r.json()["members"] == ["b"] and r.json()["changed"] is False
    r = await api.client.post("/api/v1/groups/dev/members", json={"peer": "b"}, headers=h)
    assert r.json()["changed"] is False
    r = await api.client.post("/api/v1/groups/all/members", json={"peer": "b"}, headers=h)
    assert r.status_code == 409
    r = await api.client.post("/api/v1/groups/nope/members", json={"peer": "b"}, headers=h)
    assert r.status_code == 404
    assert (await api.client.delete("/api/v1/groups/dev", headers=h)).status_code == 204
    assert [g["name"] for g in (await api.client.get("/api/v1/groups", headers=h)).json()] == [
        "all"]


async def test_auto_groups(api: ApiEnv) -> None:
    await api.client.post("/api/v1/groups", json={"name": "servers"}, headers=api.admin)
    k = await make_key(api, reusable=True, auto_groups=["servers"])
    await enroll(api, k["key"], "s1")
    r = await api.client.get("/api/v1/peers/s1", headers=api.admin)
    assert r.json()["groups"] == ["all", "servers"]


async def test_openapi_and_metrics(api: ApiEnv) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    assert "/api/v1/enroll" in spec["paths"]
    m = await api.client.get("/metrics")
    assert "wiremesh_enrolments_total" in m.text


async def test_audit_log_records_changes(api: ApiEnv) -> None:
    await make_key(api)
    log = await api.store.audit.recent()
    assert log[0].action == "setup_key.create" and log[0].actor == "admin:initial"


async def test_enrolment_batch_refuses_each_on_its_own(api: ApiEnv) -> None:
    from wiremesh.store.enrolment import Enrolled, NewPeer
    from wiremesh.store.errors import Conflict, Refused

    one_off = (await make_key(api))["key"]
    reusable = (await make_key(api, reusable=True))["key"]
    dup = pub()
    got = await api.store.enrolment.enroll_many([
        NewPeer(one_off, pub(), "a", 51820, []),
        NewPeer(one_off, pub(), "b", 51820, []),       # the one-off key is now used up
        NewPeer(reusable, dup, "c", 51820, []),
        NewPeer(reusable, dup, "c", 51820, []),        # same key twice in one batch
        NewPeer("wmk_bogus", pub(), "d", 51820, []),
        NewPeer(reusable, pub(), "c", 51820, []),
    ])
    kinds = [type(g) for g in got]
    assert kinds == [Enrolled, Refused, Enrolled, Conflict, Refused, Enrolled]
    names = [g.peer.name for g in got if isinstance(g, Enrolled)]
    ips = [g.peer.overlay_ip for g in got if isinstance(g, Enrolled)]
    assert names == ["a", "c", "c-2"] and len(set(ips)) == 3
    listed = (await api.client.get("/api/v1/peers", headers=api.admin)).json()
    assert sorted(p["name"] for p in listed) == ["a", "c", "c-2"]


async def test_endpoint_report_orders_candidates_and_names_the_stun_port(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True)
    a = (await enroll(api, k["key"], "a", listen_port=51900)).json()
    auth = {"Authorization": f"Bearer {a['token']}"}
    body = {"listen_port": 51900, "candidates": [
        {"endpoint": "198.19.1.2:51900", "kind": "local"},
        {"endpoint": "203.0.113.9:40001", "kind": "mapped"},
        {"endpoint": "198.19.1.2:51900", "kind": "local"}]}
    r = await api.client.put("/api/v1/agent/endpoints", json=body, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"observed": "192.0.2.50", "stun_port": None}
    got = (await api.client.get("/api/v1/peers/a", headers=api.admin)).json()["endpoints"]
    # Mapped first (it crosses NATs), then the LAN address, then what the server saw.
    assert got == ["203.0.113.9:40001", "198.19.1.2:51900", "192.0.2.50"]
    for bad, field in (({"endpoint": "203.0.113.9:0", "kind": "mapped"}, "endpoint"),
                       ({"endpoint": "203.0.113.9:1", "kind": "relayed"}, "kind")):
        r = await api.client.put("/api/v1/agent/endpoints", headers=auth,
                                 json={"listen_port": 1, "candidates": [bad]})
        assert r.status_code == 422 and field in str(field_of(r)), r.text


async def test_agents_report_how_they_reach_each_peer(api: ApiEnv) -> None:
    k = await make_key(api, reusable=True)
    a = (await enroll(api, k["key"], "a")).json()
    b_key = pub()
    b = (await api.client.post("/api/v1/enroll", json={
        "setup_key": k["key"], "public_key": b_key, "hostname": "b"})).json()
    auth = {"Authorization": f"Bearer {a['token']}"}
    body = {"peers": [{"peer": b_key, "path": "direct", "endpoint": "203.0.113.7:40001",
                       "last_handshake": 1_800_000_000.5}]}
    r = await api.client.put("/api/v1/agent/paths", json=body, headers=auth)
    assert r.status_code == 204, r.text
    got = (await api.client.get("/api/v1/peers/a", headers=api.admin)).json()["paths"]
    assert got == [{"peer": "b", "path": "direct", "endpoint": "203.0.113.7:40001",
                    "last_handshake": "2027-01-15T08:00:00.500000Z"}]
    listed = {p["name"]: p["paths"] for p in
              (await api.client.get("/api/v1/peers", headers=api.admin)).json()}
    assert listed["a"] == got and listed["b"] == []
    assert b["name"] == "b"
    for bad in ({"peer": b_key, "path": "sideways"}, {"peer": "nokey", "path": "relayed"},
                {"peer": b_key, "path": "direct", "endpoint": "x:1"}):
        r = await api.client.put("/api/v1/agent/paths", json={"peers": [bad]}, headers=auth)
        assert r.status_code == 422 and field_of(r) and field_of(r)[0].startswith("peers.0")
    r = await api.client.put("/api/v1/agent/paths", json=body)
    assert r.status_code == 401
