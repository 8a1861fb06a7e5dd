"""Admin tokens: created with a role and shown once, stored hashed, listed, revoked (401 at
once, also through another replica), every change audited with the acting token's name; an
auditor token reads but never writes."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx

from tests.conftest import ApiEnv
from wiremesh.server.app import create_app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(api: ApiEnv, name: str, **kw) -> dict:
    r = await api.client.post("/api/v1/admin-tokens", json={"name": name, **kw},
                              headers=api.admin)
    assert r.status_code == 201, r.text
    return r.json()


async def test_create_list_revoke_and_audit(api: ApiEnv) -> None:
    t = await create(api, "ci")
    assert t["role"] == "admin" and t["token"].startswith("wma_")
    listed = (await api.client.get("/api/v1/admin-tokens", headers=api.admin)).json()
    assert [(x["name"], x["role"], x["token"]) for x in listed] == [
        ("initial", "admin", None), ("ci", "admin", None)]
    rows = await api.store.admin_tokens.all()
    assert t["token"] not in {r.token_hash for r in rows}
    # The new token acts, and the audit log names it.
    r = await api.client.post("/api/v1/groups", json={"name": "g"}, headers=bearer(t["token"]))
    assert r.status_code == 201
    r = await api.client.post("/api/v1/admin-tokens", json={"name": "ci"}, headers=api.admin)
    assert r.status_code == 409
    r = await api.client.delete("/api/v1/admin-tokens/ci", headers=api.admin)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    r = await api.client.get("/api/v1/peers", headers=bearer(t["token"]))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    r = await api.client.delete("/api/v1/admin-tokens/ci", headers=api.admin)
    assert r.status_code == 409 and "already revoked" in r.json()["detail"], r.text
    assert (await api.client.delete("/api/v1/admin-tokens/nosuch",
                                    headers=api.admin)).status_code == 404
    # A revoked token's name stays its own: the audit log's admin:ci names one token.
    r = await api.client.post("/api/v1/admin-tokens", json={"name": "ci"}, headers=api.admin)
    assert r.status_code == 409 and "never reused" in r.json()["detail"], r.text
    audit = (await api.client.get("/api/v1/audit", headers=api.admin)).json()
    # Times say their zone, as every other time the API gives (SQLite keeps them naive).
    assert all(datetime.fromisoformat(e["at"]).utcoffset() == timedelta(0) for e in audit)
    seen = [(e["actor"], e["action"]) for e in audit]
    assert ("admin:initial", "admin_token.create") in seen
    assert ("admin:ci", "group.create") in seen
    assert ("admin:initial", "admin_token.revoke") in seen


async def test_auditor_reads_but_never_writes(api: ApiEnv) -> None:
    aud = bearer((await create(api, "look", role="auditor"))["token"])
    assert (await api.client.get("/api/v1/peers", headers=aud)).status_code == 200
    assert (await api.client.get("/api/v1/audit", headers=aud)).status_code == 200
    for method, path, body in [("POST", "/api/v1/groups", {"name": "g"}),
                               ("POST", "/api/v1/setup-keys", {"name": "k"}),
                               ("POST", "/api/v1/admin-tokens", {"name": "x"}),
                               ("DELETE", "/api/v1/admin-tokens/initial", None)]:
        r = await api.client.request(method, path, json=body, headers=aud)
        assert r.status_code == 403, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert "read-only role 'auditor'" in r.json()["detail"]
    r = await api.client.post("/api/v1/admin-tokens", json={"name": "x", "role": "root"},
                              headers=api.admin)
    assert r.status_code == 422


async def test_revocation_holds_at_once_on_another_replica(api: ApiEnv) -> None:
    t = bearer((await create(api, "ops"))["token"])
    other = create_app(api.db_url, poll_interval=60.0)
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other, client=("192.0.2.60", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://wm") as c2:
            assert (await c2.get("/api/v1/peers", headers=t)).status_code == 200
            await api.client.delete("/api/v1/admin-tokens/ops", headers=api.admin)
            assert (await c2.get("/api/v1/peers", headers=t)).status_code == 401
