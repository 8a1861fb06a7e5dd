"""The server's HTTP surface as a browser meets it: no page that loads scripts from a CDN, and
security headers on every response, not only on the console's."""

from __future__ import annotations

import httpx
import pytest

from tests.api.test_stream import first_peer, messages
from tests.conftest import ApiEnv, serve
from wiremesh.server.app import create_app
from wiremesh.server.bodylimit import MAX_BODY

LOCKED_DOWN = "default-src 'none'; frame-ancestors 'none'"


def assert_hardened(r: httpx.Response, csp: str = LOCKED_DOWN) -> None:
    assert r.headers.get_list("content-security-policy") == [csp], r.url
    assert r.headers["x-content-type-options"] == "nosniff", r.url
    assert r.headers["x-frame-options"] == "DENY", r.url
    assert r.headers["referrer-policy"] == "no-referrer", r.url


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_no_swagger_or_redoc_pages(api: ApiEnv, path: str) -> None:
    # They load their scripts from cdn.jsdelivr.net, which would run as the console's origin.
    r = await api.client.get(path)
    assert r.status_code == 404 and "cdn." not in r.text


async def test_the_openapi_spec_stays(api: ApiEnv) -> None:
    r = await api.client.get("/openapi.json")
    assert r.status_code == 200 and "/api/v1/peers" in r.json()["paths"]
    assert_hardened(r)


async def test_api_answers_of_every_kind_carry_the_headers(api: ApiEnv) -> None:
    export = await api.client.get("/api/v1/policy/export", headers=api.admin)
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/plain")
    too_large = await api.client.post("/api/v1/policy/apply", content=b"{}", headers={
        **api.admin, "content-type": "application/json", "content-length": str(MAX_BODY + 1)})
    assert too_large.status_code == 413
    for r in (export, too_large, await api.client.get("/healthz"),
              await api.client.get("/api/v1/peers"),  # 401
              await api.client.get("/api/v1/nope"),  # 404
              await api.client.get("/auth/callback", params={"state": "x", "code": "y"}),
              await api.client.get("/favicon.ico"),
              await api.client.get("/console/session")):
        assert_hardened(r)


async def test_console_pages_keep_their_own_csp(api: ApiEnv) -> None:
    page = await api.client.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert_hardened(page, csp)
    assert_hardened(await api.client.get("/assets/app.js"), csp)


def test_the_netmap_stream_still_streams_with_the_headers(tmp_path) -> None:
    tokens: list[str] = []
    app = create_app(f"sqlite:///{tmp_path}/s.db", on_admin_token=tokens.append)
    with serve(app) as url, httpx.Client(base_url=url, timeout=10.0) as c:
        _, _, auth = first_peer(c, {"Authorization": f"Bearer {tokens[0]}"})
        with c.stream("GET", "/api/v1/agent/netmap", headers=auth) as r:
            assert_hardened(r)
            assert next(messages(r))["type"] == "full"
