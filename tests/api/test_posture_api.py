"""Posture over the API: agents report their version and OS family, a policy file requires
them, the compiled netmaps and `explain` follow."""

from __future__ import annotations

from tests.api.test_api import enroll, make_key
from tests.conftest import ApiEnv

POLICY = """
policies:
  - name: strict
    sources: [all]
    destinations: [all]
    posture: {min_agent_version: 0.2.0, os: [linux]}
"""


async def test_reported_posture_gates_a_policy_and_explain_says_why(api: ApiEnv) -> None:
    key = (await make_key(api, reusable=True, usage_limit=2))["key"]
    peers = {}
    for name, version in (("new", "0.2.0"), ("old", "0.1.0")):
        r = await enroll(api, key, name)
        assert r.status_code == 201, r.text
        peers[name] = r.json()
        report = await api.client.put(
            "/api/v1/agent/endpoints", headers={"Authorization": f"Bearer {r.json()['token']}"},
            json={"listen_port": 51820, "agent_version": version, "os_family": "linux"})
        assert report.status_code == 200, report.text
    listed = {p["name"]: p for p in (await api.client.get("/api/v1/peers",
                                                          headers=api.admin)).json()}
    assert (listed["old"]["agent_version"], listed["old"]["os_family"]) == ("0.1.0", "linux")
    r = await api.client.post("/api/v1/policy/apply", headers=api.admin,
                              json={"text": POLICY})
    assert r.status_code == 200, r.text
    ex = (await api.client.get("/api/v1/policy/explain", headers=api.admin,
                               params={"src": "old", "dst": "new"})).json()
    assert not ex["allowed"] and ex["verdicts"][0]["verdict"] == "posture", ex
    assert "older than 0.2.0" in ex["summary"]
    ok = (await api.client.get("/api/v1/policy/explain", headers=api.admin,
                               params={"src": "new", "dst": "old"})).json()
    assert ok["allowed"]
    await api.hub.refresh()
    new_ip = peers["new"]["overlay_ip"]
    assert {r.src for r in api.hub.current[peers["old"]["peer_id"]].inbound} == {new_ip}
    assert {r.src for r in api.hub.current[peers["new"]["peer_id"]].inbound} == set()
    bad = await api.client.put(
        "/api/v1/agent/endpoints",
        headers={"Authorization": f"Bearer {peers['old']['token']}"},
        json={"listen_port": 51820, "os_family": "beos"})
    assert bad.status_code == 422 and "os_family" in bad.text
