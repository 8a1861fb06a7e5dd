"""Shared fixtures: a real server app over a real database (SQLite file, PostgreSQL when
WIREMESH_TEST_PG_URL is set), driven through real HTTP semantics with httpx."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from hypothesis import settings

from wiremesh.lab.netns import missing_requirements, unwind_on_sigterm
from wiremesh.server.app import create_app

PG_URL = os.environ.get("WIREMESH_TEST_PG_URL")

# Property tests check behaviour, not speed (speed goals live in bench/): hypothesis's default
# 200 ms deadline per example made them fail on a busy machine (test_diff_then_apply_gives_new).
settings.register_profile("wiremesh", deadline=None)
settings.load_profile("wiremesh")


def pytest_configure(config: pytest.Config) -> None:
    # A run stopped with SIGTERM (a CI job cancelled, `timeout`) unwinds like Ctrl-C: the labs'
    # context managers and fixtures tear their namespaces and processes down, where Python's
    # default for SIGTERM would end the run and leave them all behind.
    unwind_on_sigterm()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = missing_requirements()
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"e2e needs {', '.join(missing)}")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


async def _reset_postgres(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()


@dataclass
class ApiEnv:
    client: httpx.AsyncClient
    app: object
    admin: dict[str, str]
    db_url: str

    @property
    def hub(self):  # type: ignore[no-untyped-def]
        return self.app.state.hub  # type: ignore[attr-defined]

    @property
    def store(self):  # type: ignore[no-untyped-def]
        return self.app.state.store  # type: ignore[attr-defined]


def billion_laughs(levels: int, width: int = 9) -> str:
    """A few hundred bytes that expand to width**levels values: each list repeats the last."""
    lines = ['l0: &l0 ["lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + f"\ngroups: {{g: *l{levels - 1}}}\n"


def db_params() -> list:
    return ["sqlite", pytest.param("postgres", marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not PG_URL, reason="set WIREMESH_TEST_PG_URL to test PostgreSQL"),
    ])]


@pytest.fixture(params=db_params())
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/server.db"
    assert PG_URL
    await _reset_postgres(PG_URL)
    return PG_URL


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[ApiEnv]:
    tokens: list[str] = []
    app = create_app(db_url, on_admin_token=tokens.append, poll_interval=0.2)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("192.0.2.50", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://wm") as c:
            yield ApiEnv(c, app, {"Authorization": f"Bearer {tokens[0]}"}, db_url)


@contextmanager
def serve(app: object, tls: tuple[Path, Path] | None = None, port: int = 0) -> Iterator[str]:
    """Serve `app` with uvicorn on loopback `port` (default: a free one; HTTPS with the
    (cert, key) pair `tls`) in a thread; yields its base URL."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    cert, key = tls or (None, None)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ssl_certfile=cert,
                                           ssl_keyfile=key))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        t.join(15)
