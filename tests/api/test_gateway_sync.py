"""The gateway's sync against a real server over HTTP: it stores only answers signed with the
server key it pinned, for itself and the question it asked."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from tests.api.test_gateway_feed import POLICY, STAFF_TOO
from tests.conftest import serve
from wiremesh.core.wire import FEED_SIGNATURE_HEADER, Signer
from wiremesh.gateway.metrics import GatewayMetrics
from wiremesh.gateway.store import KnownPeerStore
from wiremesh.gateway.sync import FeedError, KnownPeerSync, SyncConfig
from wiremesh.server.app import create_app
from wiremesh.wg.keys import generate_private_key, public_key_of


@dataclass
class Env:
    cfg: SyncConfig
    http: httpx.Client
    admin: dict[str, str]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    tokens: list[str] = []
    app = create_app(f"sqlite:///{tmp_path}/s.db", on_admin_token=tokens.append,
                     poll_interval=0.2)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve(app))
        http = stack.enter_context(httpx.Client(base_url=url, timeout=10.0))
        admin = {"Authorization": f"Bearer {tokens[0]}"}

        def key(**kw: object) -> str:
            r = http.post("/api/v1/setup-keys", json={"name": "k", **kw}, headers=admin)
            return str(r.json()["key"])

        agents = key(reusable=True)
        for name in ("c1", "c2", "c3"):
            assert http.post("/api/v1/enroll", json={
                "setup_key": agents, "hostname": name,
                "public_key": public_key_of(generate_private_key())}).status_code == 201
        gw_pub = public_key_of(generate_private_key())
        r = http.post("/api/v1/enroll", json={"setup_key": key(role="gateway"),
                                              "hostname": "gw", "public_key": gw_pub})
        assert r.status_code == 201, r.text
        assert http.post("/api/v1/policy/apply", json={"text": POLICY},
                         headers=admin).status_code == 200
        cfg = SyncConfig(server=url, token=r.json()["token"],
                         server_key=r.json()["server_key"]["public_key"], peer_key=gw_pub,
                         wait=0.2)
        yield Env(cfg, http, admin)


def _sync_once(cfg: SyncConfig, db: Path, transport: httpx.BaseTransport | None = None,
               ) -> KnownPeerStore:
    """One sync step into the cache at `db` (through `transport` when given)."""
    sync = KnownPeerSync(cfg, db, GatewayMetrics(), lambda _keys: None)
    client = httpx.Client(base_url=cfg.server, transport=transport,
                          headers={"Authorization": f"Bearer {cfg.token}"})
    store = KnownPeerStore(db)
    try:
        sync._step(client, store)
    finally:
        client.close()
    return store


class Tamper(httpx.BaseTransport):
    """A man in the middle (holding a valid TLS certificate, say): passes requests on and
    edits the answers."""

    def __init__(self, edit: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.edit = edit

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.inner.handle_request(request)
        r.read()
        headers = dict(r.headers)
        body = r.content
        if self.edit == "body":
            # One more known peer: a key the attacker holds.
            attacker = public_key_of(generate_private_key())
            body = body.replace(b'"peers":[', f'"peers":[[999,"{attacker}","100.64.9.9"],'
                                .encode(), 1)
        elif self.edit == "unsigned":
            headers.pop(FEED_SIGNATURE_HEADER.lower(), None)
        headers.pop("content-length", None)
        return httpx.Response(r.status_code, headers=headers, content=body)


def test_signed_feed_is_stored(env: Env, tmp_path: Path) -> None:
    store = _sync_once(env.cfg, tmp_path / "known.db")
    assert store.count() == 2 and store.sync_revision() is not None


@pytest.mark.parametrize("edit", ["body", "unsigned"])
def test_tampered_or_unsigned_answers_are_refused(env: Env, tmp_path: Path,
                                                  edit: str) -> None:
    with pytest.raises(FeedError, match=r"refused: (signature does not verify|the answer is "
                                        r"not signed)"):
        _sync_once(env.cfg, tmp_path / "known.db", Tamper(edit))
    assert KnownPeerStore(tmp_path / "known.db").count() == 0


def test_answers_signed_by_another_key_or_for_another_gateway_are_refused(
        env: Env, tmp_path: Path) -> None:
    other = Signer(Signer.generate()).public_key
    for cfg in (replace(env.cfg, server_key=other),
                replace(env.cfg, peer_key=public_key_of(generate_private_key()))):
        with pytest.raises(FeedError, match="signature does not verify"):
            _sync_once(cfg, tmp_path / "known.db")


def test_a_stored_revision_is_followed_by_signed_changes(env: Env, tmp_path: Path) -> None:
    db = tmp_path / "known.db"
    _sync_once(env.cfg, db)
    r = env.http.delete("/api/v1/groups/clients/members/c1", headers=env.admin)
    assert r.status_code == 200, r.text
    store = _sync_once(env.cfg, db)
    assert store.count() == 1
    # The same change, tampered with on the way: nothing is applied.
    env.http.post("/api/v1/groups/clients/members", json={"peer": "c1"}, headers=env.admin)
    with pytest.raises(FeedError, match="refused"):
        _sync_once(env.cfg, db, Tamper("unsigned"))
    assert KnownPeerStore(db).count() == 1


class Recorder(httpx.BaseTransport):
    """Passes requests on and keeps their targets."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.asked: list[httpx.URL] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(request.url)
        return self.inner.handle_request(request)


def test_after_a_restart_a_policy_change_comes_as_a_delta(env: Env, tmp_path: Path) -> None:
    """The admitted groups are kept with the cached revision, so a gateway restarted (each
    `_sync_once` is a new sync on the same cache) still tells the server what it held."""
    db = tmp_path / "known.db"
    _sync_once(env.cfg, db).close()
    r = env.http.post("/api/v1/groups", json={"name": "staff", "members": ["c3"]},
                      headers=env.admin)
    assert r.status_code in (200, 201), r.text
    r = env.http.post("/api/v1/policy/apply", json={"text": STAFF_TOO}, headers=env.admin)
    assert r.status_code == 200, r.text
    seen = Recorder()
    store = _sync_once(env.cfg, db, seen)
    assert [u.path for u in seen.asked] == ["/api/v1/gateway/changes"]
    assert seen.asked[0].params.get_list("held") == ["clients"]
    assert store.count() == 3 and store.held_groups() == {"clients", "staff"}
