"""The web console's serving: the page and its assets come from the package under a strict
Content-Security-Policy, and nothing in them needs an exception to it."""

from __future__ import annotations

import re

from tests.conftest import ApiEnv
from wiremesh.server.console import STATIC


async def test_page_and_assets_are_served_with_a_strict_csp(api: ApiEnv) -> None:
    r = await api.client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    for src in re.findall(r'(?:src|href)="(/assets/[^"]+)"', r.text):
        asset = await api.client.get(src)
        assert asset.status_code == 200, src
        assert "content-security-policy" in asset.headers
    js = await api.client.get("/assets/app.js")
    assert js.headers["content-type"].startswith(("text/javascript", "application/javascript"))


def test_console_has_no_inline_script_style_or_remote_resource() -> None:
    for f in STATIC.rglob("*"):
        if f.suffix not in (".html", ".js", ".css"):
            continue
        text = f.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), f  # inline script
        if f.suffix == ".html":
            assert not re.search(r"\son[a-z]+=", text), f  # inline event handler
            assert "style=" not in text, f
        assert not re.search(r"https?://", text), f  # everything from this origin
        assert "innerHTML" not in text and "eval(" not in text, f


async def test_session_answers_a_logged_out_browser_without_an_error(api: ApiEnv) -> None:
    r = await api.client.get("/console/session")
    assert r.status_code == 200
    assert r.json()["authenticated"] is False and r.json()["login_url"] == "/auth/login"
    assert r.json()["sso"] is False  # no provider configured: the page says so, no login link


async def test_session_names_the_role_and_the_csrf_header_writes_need(api: ApiEnv) -> None:
    auditor = (await api.client.post("/api/v1/admin-tokens", json={"name": "ro", "role": "auditor"},
                                     headers=api.admin)).json()["token"]
    me = (await api.client.get("/console/session",
                               headers={"Authorization": f"Bearer {auditor}"})).json()
    assert me["authenticated"] and me["role"] == "auditor"
    assert me["csrf_header"] and me["csrf_token"]
    bad = await api.client.get("/console/session", headers={"Authorization": "Bearer wma_no"})
    assert bad.json()["authenticated"] is False


async def test_api_errors_keep_their_problem_bodies(api: ApiEnv) -> None:
    r = await api.client.get("/api/v1/nope")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert (await api.client.get("/assets/nope.js")).status_code == 404
