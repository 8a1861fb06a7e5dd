"""Users and SSO against a real OpenID provider (node-oidc-provider, tests' loopback) and a
real server over HTTPS: browser login (code + PKCE, session cookie), roles, CSRF, device
login, and a user removed at the provider losing access."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.api.test_api import pub
from tests.conftest import serve
from wiremesh.lab.mesh import wait_until
from wiremesh.lab.netns import LabError
from wiremesh.lab.pki import make_server_cert
from wiremesh.lab.provider import (
    LabUser,
    Provider,
    missing_provider_requirements,
    running_provider,
    sign_in,
)
from wiremesh.server.app import create_app
from wiremesh.server.auth import CSRF_HEADER, CSRF_TOKEN, SESSION_COOKIE
from wiremesh.server.oidc import OidcConfig

pytestmark = pytest.mark.skipif(bool(missing_provider_requirements()),
                                reason=f"needs {', '.join(missing_provider_requirements())}")

USERS = [
    LabUser("ada", "ada-pw", ("wm-admins", "engineering")),
    LabUser("aud", "aud-pw", ("wm-auditors",)),
    LabUser("bob", "bob-pw", ("engineering",)),
    LabUser("cat", "cat-pw", ("sales",)),
]
WRITE = {CSRF_HEADER: CSRF_TOKEN}


@dataclass
class Env:
    url: str
    idp: Provider
    ca: ssl.SSLContext
    admin: dict[str, str]
    app: object

    def browser(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.ca, follow_redirects=True,
                            timeout=20)

    @contextmanager
    def login(self, user: str) -> Iterator[httpx.Client]:
        with self.browser() as c:
            done = sign_in(c, f"{self.url}/auth/login?next=/peers", user,
                           next(u.password for u in USERS if u.name == user))
            assert done.status_code == 200, done.text
            yield c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    d: Path = tmp_path_factory.mktemp("sso")
    tls = make_server_cert(d / "tls", ["127.0.0.1"])
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    with running_provider(d, USERS, [f"{url}/auth/callback"], tls=tls) as idp:
        tokens: list[str] = []
        app = create_app(f"sqlite:///{d}/server.db", on_admin_token=tokens.append,
                         poll_interval=0.2, relay=False, oidc=OidcConfig(
                             issuer=idp.issuer, client_id=idp.client_id,
                             client_secret=idp.client_secret,
                             scopes="openid email profile groups offline_access",
                             admin_groups=("wm-admins",), auditor_groups=("wm-auditors",),
                             ca_file=str(tls.ca_file), check_interval=timedelta(seconds=1)))
        with serve(app, tls=(tls.cert_file, tls.key_file), port=port):
            yield Env(url, idp, ssl.create_default_context(cafile=tls.ca_file),
                      {"Authorization": f"Bearer {tokens[0]}"}, app)


def test_browser_login_sets_a_strict_session_cookie(env: Env) -> None:
    with env.browser() as c:
        done = sign_in(c, f"{env.url}/auth/login?next=/peers", "bob", "bob-pw")
        # Back at our callback, which sets the session and sends the browser on.
        assert done.url.path == "/auth/callback" and 'url=/peers"' in done.text
        cookie = next(h for h in done.headers.get_list("set-cookie")
                      if h.startswith(SESSION_COOKIE + "="))
        attrs = {a.strip().lower() for a in cookie.split(";")}
        assert {"httponly", "secure", "samesite=strict", "path=/"} <= attrs
        me = c.get("/api/v1/me").json()
        assert (me["kind"], me["role"], me["groups"]) == ("user", "user", ["engineering"])
        console = c.get("/console/session").json()
        assert (console["authenticated"], console["role"]) == (True, "user")
        assert console["csrf_token"] == CSRF_TOKEN
        # Logging out ends the session on the server, not only in this browser.
        session = c.cookies[SESSION_COOKIE]
        assert c.post("/auth/logout", headers=WRITE).status_code == 204
    with env.browser() as other:
        other.cookies.set(SESSION_COOKIE, session, domain="127.0.0.1")
        assert other.get("/api/v1/me").status_code == 401


def test_login_refuses_foreign_state_and_open_redirects(env: Env) -> None:
    with env.browser() as c:
        assert c.get("/auth/login", params={"next": "//evil.example/"}).status_code == 422
        r = c.get("/auth/callback", params={"state": "forged", "code": "x"})
        assert r.status_code == 400 and "state" in r.json()["detail"]
    # A wrong password at the provider never reaches us.
    with env.browser() as c, pytest.raises(LabError, match="refused"):
        sign_in(c, f"{env.url}/auth/login", "bob", "wrong")


def test_roles_come_from_provider_groups(env: Env) -> None:
    for user, role in (("ada", "admin"), ("aud", "auditor"), ("cat", "user")):
        with env.login(user) as c:
            assert c.get("/api/v1/me").json()["role"] == role


def test_an_auditor_can_change_nothing(env: Env) -> None:
    with env.login("aud") as c:
        assert c.get("/api/v1/peers").status_code == 200
        assert c.get("/api/v1/policy/export").status_code == 200
        assert c.get("/api/v1/users").status_code == 200
        for method, path, body in (
                ("POST", "/api/v1/groups", {"name": "x"}),
                ("POST", "/api/v1/setup-keys", {"name": "k"}),
                ("POST", "/api/v1/admin-tokens", {"name": "t"}),
                ("PUT", "/api/v1/routes/r1", {"prefix": "198.18.1.0/24", "routers": "all"}),
                ("DELETE", "/api/v1/users/1", None),
                ("DELETE", "/api/v1/peers/1", None)):
            r = c.request(method, path, json=body, headers=WRITE)
            assert r.status_code in (403, 404), (method, path, r.status_code)
            if r.status_code == 404:  # no such peer: nothing to refuse yet
                assert path.startswith("/api/v1/peers")
            else:
                assert "read-only" in r.json()["detail"], r.text


def test_cookie_writes_need_the_csrf_header_and_our_origin(env: Env) -> None:
    with env.login("ada") as c:
        assert c.post("/api/v1/groups", json={"name": "csrf1"}).status_code == 403
        r = c.post("/api/v1/groups", json={"name": "csrf1"},
                   headers={**WRITE, "Origin": "https://evil.example"})
        assert r.status_code == 403 and "origin" in r.json()["detail"]
        r = c.post("/api/v1/groups", json={"name": "csrf1"},
                   headers={**WRITE, "Origin": env.url})
        assert r.status_code == 201, r.text
        # Bearer tokens are not ambient credentials: no header needed.
    with httpx.Client(base_url=env.url, verify=env.ca, headers=env.admin) as admin:
        assert admin.delete("/api/v1/groups/csrf1").status_code == 204


def _device_login(env: Env, user: str, hostname: str) -> dict:
    with env.browser() as agent, env.browser() as person:
        start = agent.post("/auth/device", json={"hostname": hostname})
        assert start.status_code == 200, start.text
        s = start.json()
        assert s["user_code"] and s["verification_uri"].startswith(env.idp.issuer)
        poll = agent.post("/auth/device/poll", json={"login_id": s["login_id"]}).json()
        assert poll["status"] == "pending"
        done = sign_in(person, s["verification_uri_complete"], user,
                       next(u.password for u in USERS if u.name == user))
        assert "Device connected" in done.text
        poll = agent.post("/auth/device/poll", json={"login_id": s["login_id"]}).json()
        assert poll["status"] == "ok" and poll["setup_key"], poll
        # The login is spent.
        again = agent.post("/auth/device/poll", json={"login_id": s["login_id"]})
        assert again.status_code == 404
        enrolled = agent.post("/api/v1/enroll", json={
            "setup_key": poll["setup_key"], "public_key": pub(), "hostname": hostname})
        assert enrolled.status_code == 201, enrolled.text
        return dict(enrolled.json())


def test_a_user_sees_and_manages_only_own_peers(env: Env) -> None:
    mine = _device_login(env, "cat", "cat-laptop")
    with httpx.Client(base_url=env.url, verify=env.ca, headers=env.admin) as admin:
        key = admin.post("/api/v1/setup-keys", json={"name": "srv"}).json()["key"]
        other = admin.post("/api/v1/enroll", json={
            "setup_key": key, "public_key": pub(), "hostname": "server-1"}).json()
    with env.login("cat") as c:
        names = [p["name"] for p in c.get("/api/v1/peers").json()]
        assert names == ["cat-laptop"]
        assert c.get(f"/api/v1/peers/{other['peer_id']}").status_code == 404
        assert c.delete(f"/api/v1/peers/{other['peer_id']}", headers=WRITE).status_code == 404
        assert c.get("/api/v1/setup-keys").status_code == 403
        assert c.get("/api/v1/users").status_code == 403
        r = c.patch(f"/api/v1/peers/{mine['peer_id']}", json={"name": "cat-pc"},
                    headers=WRITE)
        assert r.status_code == 200 and r.json()["user_id"] is not None
        assert c.delete(f"/api/v1/peers/{mine['peer_id']}", headers=WRITE).status_code == 204


def test_a_user_removed_at_the_provider_leaves_the_mesh(env: Env) -> None:
    enrolled = _device_login(env, "bob", "bob-laptop")
    hub = env.app.state.hub  # type: ignore[attr-defined]
    wait_until(lambda: enrolled["peer_id"] in hub.current, 10, "bob's peer in the mesh")
    # Bob's provider group is a policy group: idp.engineering.
    with httpx.Client(base_url=env.url, verify=env.ca, headers=env.admin) as admin:
        groups = {g["name"]: g["members"] for g in admin.get("/api/v1/groups").json()}
        users = {u["sub"]: u for u in admin.get("/api/v1/users").json()}
        assert users["bob"]["peers"] == ["bob-laptop"] and not users["bob"]["disabled_at"]
    assert enrolled["peer_id"] in hub.state.groups["idp.engineering"], groups
    env.idp.remove_user("bob")
    # The server re-checks users every second (refresh token) and recompiles.
    wait_until(lambda: enrolled["peer_id"] not in hub.current, 15,
               "bob's peer to leave the mesh")
    with httpx.Client(base_url=env.url, verify=env.ca, headers=env.admin) as admin:
        bob = next(u for u in admin.get("/api/v1/users").json() if u["sub"] == "bob")
        assert bob["disabled_at"] and "refresh token" in bob["disabled_reason"]
        audit = admin.get("/api/v1/audit").json()
        assert any(e["action"] == "user.disable" for e in audit)
    env.idp.add_user(USERS[2])  # for the other tests of this module
