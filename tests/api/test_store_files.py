"""The SQLite store's files are the server's user's alone: they hold the netmap signing key
in plain text and users' refresh tokens, so a local user who reads them can forge netmaps."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from wiremesh.store.db import make_engine, migrate, sqlite_file


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    # Under umask 077 every new file is private anyway: test under the common 022.
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_new_database_its_wal_files_and_directories_are_private(tmp_path: Path) -> None:
    db = tmp_path / "var" / "lib" / "s.db"
    engine = make_engine(f"sqlite:///{db}")
    try:
        await migrate(engine)  # a write: SQLite has made the -wal and -shm files by now
        modes = {f.name: mode(f) for f in db.parent.iterdir()}
    finally:
        await engine.dispose()
    assert modes == {"s.db": 0o600, "s.db-wal": 0o600, "s.db-shm": 0o600}
    assert (mode(db.parent), mode(db.parent.parent)) == (0o700, 0o700)


async def test_a_readable_database_is_made_private_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # As an older version left it (0644), with a WAL file beside it (a replica running).
    db, wal = tmp_path / "s.db", tmp_path / "s.db-wal"
    engine = make_engine(f"sqlite:///{db}")
    await migrate(engine)
    await engine.dispose()
    wal.touch()
    for f in (db, wal):
        f.chmod(0o644)
    caplog.set_level(logging.WARNING, "wiremesh.store.db")
    engine = make_engine(f"sqlite:///{db}")
    try:
        await migrate(engine)  # still the same database
    finally:
        await engine.dispose()
    assert mode(db) == 0o600
    assert [r.getMessage() for r in caplog.records] == [
        f"database file {f} was readable by other users (mode 0644): made it 0600, as it "
        "holds the server's signing key" for f in (db, wal)]


def test_a_relative_database_path_is_named_absolute(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_file("sqlite:///var/s.db") == tmp_path / "var" / "s.db"
    assert sqlite_file("sqlite:////var/lib/wiremesh/server.db") == Path(
        "/var/lib/wiremesh/server.db")
    for other in ("sqlite://", "sqlite:///:memory:", "postgresql://u@h/db"):
        assert sqlite_file(other) is None
