"""Schema-driven fuzzing of the whole HTTP API with schemathesis: every phase (schema
examples, coverage, random fuzzing, and the stateful phase that chains calls through links it
infers: create a setup key, enrol with it, read, patch and delete the peer...) against the real
app over a real store, over real HTTP (uvicorn on 127.0.0.1, so the HTTP parsing, body limit and
lifespan are the production ones). Admin operations use the bootstrap token, agent operations a
peer's token. Every response must keep to the OpenAPI document, and none may be a server error:
the responses are counted at the server, not taken from the fuzzer's word."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.conftest import serve
from wiremesh.server.app import create_app
from wiremesh.wg.keys import generate_private_key, public_key_of

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
RELAY_SECRET = "fuzz-relay-secret"


class Tally:
    """Counts the status of every HTTP response the app sends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.statuses = app, Counter[int]()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                self.statuses[msg["status"]] += 1
            await send(msg)

        await self.app(scope, receive, counted if scope["type"] == "http" else send)


@pytest.mark.timeout(900)
@pytest.mark.skipif(not SCHEMATHESIS.exists(),
                    reason="schemathesis is not installed: pip install -e '.[test]'")
def test_fuzzed_api_keeps_its_schema_and_never_fails(tmp_path: Path) -> None:
    tokens: list[str] = []
    app = Tally(create_app(f"sqlite:///{tmp_path}/fuzz.db", on_admin_token=tokens.append,
                           poll_interval=0.2, relay_secret=RELAY_SECRET))
    with serve(app) as url:
        admin = {"Authorization": f"Bearer {tokens[0]}"}
        with httpx.Client(base_url=url, headers=admin) as c:
            key = c.post("/api/v1/setup-keys", json={"name": "fuzz", "reusable": True})
            peer = c.post("/api/v1/enroll", json={
                "setup_key": key.json()["key"], "hostname": "fuzz-agent",
                "public_key": public_key_of(generate_private_key())})
            assert peer.status_code == 201, peer.text
        report = tmp_path / "report.json"
        run = subprocess.run(
            [SCHEMATHESIS, "--config-file", CONFIG, "run",
             f"{url}/openapi.json", "--no-color", "--report", "json",
             "--report-json-path", report],
            env={**os.environ, "WM_ADMIN_TOKEN": tokens[0], "WM_PEER_TOKEN": peer.json()["token"],
                 "WM_RELAY_SECRET": RELAY_SECRET},
            cwd=tmp_path, capture_output=True, text=True, timeout=850)
    out = run.stdout[:25000]  # the failures, each with a curl command to reproduce it
    assert run.returncode == 0, out
    assert not [s for s in app.statuses if s >= 500], (app.statuses, out)
    assert app.statuses.total() >= 2000, (app.statuses, out)
