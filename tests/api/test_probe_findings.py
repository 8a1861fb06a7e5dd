"""What probing the API as a hostile peer or a careless admin found, each pinned by a test:
every refusal is a problem body naming the field, and nothing refused reaches the store."""

from __future__ import annotations

import httpx
import pytest

from tests.api.test_api import enroll, make_key, pub
from tests.api.test_bad_refs import assert_problem
from tests.api.test_gateway_feed import _gateway
from tests.conftest import ApiEnv
from wiremesh.core.wire import FullMessage, encode_message, parse_message


async def _peer(api: ApiEnv, hostname: str = "a") -> dict[str, str]:
    k = await make_key(api)
    r = await enroll(api, k["key"], hostname)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


@pytest.mark.parametrize("handshake", ["Infinity", "-Infinity", "NaN", "1e300",
                                       "253402300800"])
async def test_a_peer_cannot_report_a_handshake_no_datetime_holds(api: ApiEnv,
                                                                  handshake: str) -> None:
    # Python's JSON decoder takes Infinity and NaN; reported, they made GET /peers a 500
    # for every admin until the server restarted.
    peer = await _peer(api)
    body = f'{{"peers": [{{"peer": "{pub()}", "path": "direct", "last_handshake": {handshake}}}]}}'
    r = await api.client.put("/api/v1/agent/paths", content=body,
                             headers={**peer, "content-type": "application/json"})
    assert assert_problem(r, 422)["errors"][0]["field"] == "peers.0.last_handshake"
    r = await api.client.get("/api/v1/peers", headers=api.admin)
    assert r.status_code == 200 and r.json()[0]["paths"] == []


async def test_the_latest_handshake_a_datetime_holds_is_shown(api: ApiEnv) -> None:
    peer = await _peer(api)
    r = await api.client.put("/api/v1/agent/paths", headers=peer, json={"peers": [
        {"peer": pub(), "path": "direct", "last_handshake": 253402300799}]})
    assert r.status_code == 204, r.text
    r = await api.client.get("/api/v1/peers", headers=api.admin)
    assert r.json()[0]["paths"][0]["last_handshake"].startswith("9999-12-31T23:59:59")


@pytest.mark.parametrize(("query", "field"), [
    ("known?after=2147483648", "after"), ("known?after=99999999999999999999", "after"),
    ("changes?since=9223372036854775808&wait=0", "since"),
])
async def test_gateway_feed_numbers_past_the_columns_are_refused(api: ApiEnv, query: str,
                                                                 field: str) -> None:
    gw = await _gateway(api)
    r = await api.client.get(f"/api/v1/gateway/{query}", headers=gw)
    assert assert_problem(r, 422)["errors"][0]["field"] == field
    r = await api.client.get("/api/v1/gateway/known?after=2147483647", headers=gw)
    assert r.status_code == 200 and r.json()["peers"] == []


async def test_a_group_created_naming_a_peer_twice_holds_it_once(api: ApiEnv) -> None:
    # It used to answer 409 "group 'g' already exists" (the duplicate membership row).
    k = await make_key(api)
    a = (await enroll(api, k["key"], "a")).json()
    r = await api.client.post("/api/v1/groups", headers=api.admin,
                              json={"name": "g", "members": ["a", "a", str(a["peer_id"])]})
    assert r.status_code == 201, r.text
    assert r.json()["members"] == ["a"]


@pytest.mark.parametrize(("text", "expected"), [
    ("groups:\n  '': []\n", "groups.: bad name ''"),
    ("groups:\n  a b: []\n", "groups.a b: bad name 'a b'"),
    ("policies:\n- {name: a, sources: [all], destinations: [all], proto: tcp, ports: ["
     + "9" * 5000 + "]}\n", "line 2: bad YAML: cannot read"),
    ("policies:\n- {name: 2001-13-45, sources: [all], destinations: [all]}\n",
     "month must be in 1..12"),
])
async def test_policy_files_the_store_cannot_hold_are_refused(api: ApiEnv, text: str,
                                                              expected: str) -> None:
    before = (await api.client.get("/api/v1/policy/export", headers=api.admin)).text
    for op in ("diff", "apply"):
        r = await api.client.post(f"/api/v1/policy/{op}", json={"text": text},
                                  headers=api.admin)
        assert expected in assert_problem(r, 422)["detail"]
    assert (await api.client.get("/api/v1/policy/export", headers=api.admin)).text == before


@pytest.mark.parametrize("client_host", ["fe80::1%eth0", "garbage", "a" * 300])
async def test_a_client_address_no_endpoint_can_be_is_not_sent_to_peers(
        api: ApiEnv, client_host: str) -> None:
    # A link-local client, or what a proxy's X-Forwarded-For says, used to be stored as the
    # peer's endpoint: every other agent then refused its whole netmap (wire contract).
    k = await make_key(api, reusable=True)
    a = (await enroll(api, k["key"], "a")).json()
    transport = httpx.ASGITransport(app=api.app, client=(client_host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://wm") as odd:
        r = await odd.post("/api/v1/enroll", json={
            "setup_key": k["key"], "public_key": pub(), "hostname": "b",
            "endpoints": ["192.0.2.7:51820"]})
        assert r.status_code == 201, r.text
        peer = {"Authorization": f"Bearer {r.json()['token']}"}
        r = await odd.put("/api/v1/agent/endpoints", headers=peer, json={"listen_port": 1})
        assert r.status_code == 200 and r.json()["observed"] is None
    r = await api.client.get("/api/v1/peers/b", headers=api.admin)
    assert r.json()["endpoints"] == []  # the report replaced the enrolment's endpoints
    await api.hub.refresh()
    line = encode_message(FullMessage.model_construct(netmap=api.hub.netmap(a["peer_id"])))
    assert parse_message(line).netmap.peers  # b is in it, and valid


async def test_an_ipv6_endpoint_and_the_same_observed_address_are_one(api: ApiEnv) -> None:
    k = await make_key(api)
    transport = httpx.ASGITransport(app=api.app, client=("fd00::7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://wm") as c:
        r = await c.post("/api/v1/enroll", json={
            "setup_key": k["key"], "public_key": pub(), "hostname": "b",
            "endpoints": ["[fd00::7]:51820"]})
    r = await api.client.get(f"/api/v1/peers/{r.json()['peer_id']}", headers=api.admin)
    assert r.json()["endpoints"] == ["[fd00::7]:51820"]


@pytest.mark.parametrize("prefix", ["fd00::/64", "100.64.0.1/32", "127.0.0.0/8"])
async def test_a_route_no_router_can_serve_is_refused(api: ApiEnv, prefix: str) -> None:
    r = await api.client.put("/api/v1/routes/r", headers=api.admin,
                             json={"prefix": prefix, "router_group": "all"})
    assert assert_problem(r, 422)["errors"][0]["field"] == "routes[0].prefix"
    assert (await api.client.get("/api/v1/routes", headers=api.admin)).json() == []


async def test_the_last_admin_token_is_not_revoked(api: ApiEnv) -> None:
    # Nothing could administer the mesh afterwards: the initial token is printed only for an
    # empty store.
    r = await api.client.delete("/api/v1/admin-tokens/initial", headers=api.admin)
    assert "last admin token" in assert_problem(r, 409)["detail"]
    assert (await api.client.get("/api/v1/peers", headers=api.admin)).status_code == 200
    r = await api.client.post("/api/v1/admin-tokens", json={"name": "look", "role": "auditor"},
                              headers=api.admin)
    r = await api.client.delete("/api/v1/admin-tokens/initial", headers=api.admin)
    assert r.status_code == 409  # an auditor administers nothing
    r = await api.client.post("/api/v1/admin-tokens", json={"name": "next"}, headers=api.admin)
    successor = {"Authorization": f"Bearer {r.json()['token']}"}
    r = await api.client.delete("/api/v1/admin-tokens/initial", headers=successor)
    assert r.status_code == 200, r.text
    r = await api.client.delete("/api/v1/admin-tokens/next", headers=successor)
    assert r.status_code == 409


async def test_a_setup_key_naming_a_group_twice_enrols(api: ApiEnv) -> None:
    # Every enrolment with it answered 500 (the membership row inserted twice).
    await api.client.post("/api/v1/groups", json={"name": "g"}, headers=api.admin)
    k = await make_key(api, auto_groups=["g", "g"])
    assert k["auto_groups"] == ["g"]
    r = await enroll(api, k["key"], "a")
    assert r.status_code == 201, r.text
    r = await api.client.get("/api/v1/groups", headers=api.admin)
    assert {g["name"]: g["members"] for g in r.json()}["g"] == ["a"]


async def test_a_key_stored_naming_a_group_twice_enrols(api: ApiEnv) -> None:
    from wiremesh.store.tables import SetupKey

    await api.client.post("/api/v1/groups", json={"name": "g"}, headers=api.admin)
    k = await make_key(api, auto_groups=["g"])
    async with api.store.db.tx() as s:  # as an older server stored it
        (await s.get(SetupKey, k["id"])).auto_groups = ["g", "g"]
    r = await enroll(api, k["key"], "a")
    assert r.status_code == 201, r.text


async def test_endpoints_an_older_server_stored_are_left_out_of_netmaps(api: ApiEnv) -> None:
    from wiremesh.store.tables import Peer

    k = await make_key(api, reusable=True)
    a = (await enroll(api, k["key"], "a")).json()
    b = (await enroll(api, k["key"], "b")).json()
    async with api.store.db.tx() as s:
        (await s.get(Peer, b["peer_id"])).endpoints = [
            "garbage", "fe80::1%eth0", "192.0.2.9", "[fd00::9]:7"]
    await api.hub.refresh()
    line = encode_message(FullMessage.model_construct(netmap=api.hub.netmap(a["peer_id"])))
    peer = next(iter(parse_message(line).netmap.peers.values()))
    assert peer.endpoints == ("192.0.2.9:51820", "[fd00::9]:7")


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/jsonx", None])
async def test_a_body_that_is_not_json_is_refused_with_415(api: ApiEnv,
                                                          content_type: str | None) -> None:
    # Answered 422 "Input should be a valid dictionary": it blamed a well-formed body for
    # its header. Without any Content-Type (curl --data-binary -H 'Content-Type:') too.
    headers = {**api.admin, **({"content-type": content_type} if content_type else {})}
    r = await api.client.post("/api/v1/groups", content=b'{"name": "g", "members": []}',
                              headers=headers)
    assert r.request.headers.get("content-type") == content_type
    body = assert_problem(r, 415)
    assert "application/json" in body["detail"] and body["errors"][0]["field"] == "Content-Type"
    assert (content_type or "no Content-Type") in body["detail"]
    r = await api.client.get("/api/v1/groups", headers=api.admin)
    assert [g["name"] for g in r.json()] == ["all"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8",
                                          "Application/JSON", "application/merge-patch+json"])
async def test_json_under_any_json_media_type_is_taken(api: ApiEnv, content_type: str) -> None:
    r = await api.client.post("/api/v1/groups", content=b'{"name": "g", "members": []}',
                              headers={**api.admin, "content-type": content_type})
    assert r.status_code == 201, r.text


async def test_an_empty_body_is_still_named_missing(api: ApiEnv) -> None:
    r = await api.client.post("/api/v1/groups", headers={**api.admin,
                                                         "content-type": "text/plain"})
    assert assert_problem(r, 422)["errors"][0]["field"] == "body"


@pytest.mark.parametrize(("body", "where"), [
    (b'{"name": "g", "members": [}', "at character 26: Expecting value"),
    (b'{"name": "g"', "at character 12: Expecting ',' delimiter"),
    (b"{nope", "at character 1: Expecting property name enclosed in double quotes")])
async def test_a_body_that_is_not_valid_json_names_where_and_why(api: ApiEnv, body: bytes,
                                                                 where: str) -> None:
    # Answered "26: JSON decode error": the offset stood where a field's name goes, the
    # decoder's reason was left out.
    r = await api.client.post("/api/v1/groups", content=body,
                              headers={**api.admin, "content-type": "application/json"})
    fault = assert_problem(r, 422)["errors"][0]
    assert fault == {"field": "body", "message": f"not valid JSON {where}"}


async def test_a_body_nested_too_deeply_says_so(api: ApiEnv) -> None:
    # Answered 400 "There was an error parsing the body", twice (title and detail).
    r = await api.client.post("/api/v1/groups", content=b"[" * 100_000 + b"]" * 100_000,
                              headers={**api.admin, "content-type": "application/json"})
    body = assert_problem(r, 400)
    assert body["title"] == "Bad Request"
    assert body["detail"] == "the JSON body nests too deeply to decode"


async def test_a_body_that_is_not_utf8_says_so(api: ApiEnv) -> None:
    # Answered "There was an error parsing the body".
    r = await api.client.post("/api/v1/groups", content=b'{"name": "\xff", "members": []}',
                              headers={**api.admin, "content-type": "application/json"})
    assert assert_problem(r, 400)["detail"] == "the JSON body is not UTF-8 text (byte 11 is 0xff)"


async def test_a_problem_title_is_its_status_phrase_not_the_detail(api: ApiEnv) -> None:
    r = await api.client.get("/api/v1/peers", headers={"Authorization": "Bearer wma_nope"})
    body = assert_problem(r, 401)
    assert body["title"] == "Unauthorized" and body["detail"] != body["title"]


async def test_the_built_in_group_is_named_as_such_not_as_missing(api: ApiEnv) -> None:
    # "no group 'all'" (404) to a setup key naming it or a delete: it looked gone.
    r = await api.client.post("/api/v1/setup-keys", headers=api.admin,
                              json={"name": "k", "auto_groups": ["all"]})
    assert assert_problem(r, 409)["errors"] == [
        {"field": "auto_groups", "message": "'all' is built in: it always holds every peer"}]
    r = await api.client.delete("/api/v1/groups/all", headers=api.admin)
    assert "'all' is built in" in assert_problem(r, 409)["detail"]
    await _peer(api)  # peer "a"
    r = await api.client.post("/api/v1/groups/all/members", headers=api.admin,
                              json={"peer": "a"})
    assert "'all' is built in" in assert_problem(r, 409)["detail"]
    r = await api.client.get("/api/v1/groups", headers=api.admin)
    assert [g["name"] for g in r.json()] == ["all"]
