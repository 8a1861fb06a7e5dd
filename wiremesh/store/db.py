"""Database URLs, engines and migrations for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from wiremesh.wg.keys import make_private_dirs

MIGRATIONS = Path(__file__).parent / "migrations"

log = logging.getLogger(__name__)


class BadDatabaseURL(ValueError):
    pass


def async_url(url: str) -> str:
    """Map the URLs users write (`sqlite:///x.db`, `postgresql://...`) to async drivers."""
    try:
        u = make_url(url)
    except ArgumentError:
        raise BadDatabaseURL(
            f"bad database URL {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB"
        ) from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        return str(u.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False))
    if backend in ("postgresql", "postgres"):
        return str(u.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False))
    raise BadDatabaseURL(f"unsupported database {backend!r}: use sqlite or postgresql")


BUSY_TIMEOUT_S = 10.0


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # We issue BEGIN ourselves (see _sqlite_begin), so the driver must not.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    # WAL lets readers (netmap streams) proceed while an admin change commits.
    _set_wal(cur)
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _set_wal(cur) -> None:  # type: ignore[no-untyped-def]
    # Switching a new database to WAL fails at once with "database is locked" while another
    # connection (a replica starting at the same moment) holds it, without waiting for the
    # busy timeout, so wait here. It happens only until the first switch: WAL is stored in
    # the file.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


READ_ONLY = "wiremesh_read_only"


def _sqlite_begin(conn: Connection) -> None:
    # A deferred transaction that reads and then writes fails at once with "database is
    # locked" when another writer committed in between (busy_timeout can't help there);
    # taking the write lock up front makes concurrent writers queue instead. Readers never
    # write, and in WAL mode they need no lock at all.
    read_only = conn.get_execution_options().get(READ_ONLY)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def sqlite_file(url: str) -> Path | None:
    """The absolute path of the file a sqlite URL names (relative ones are relative to the
    working directory); None for other databases, in-memory ones and URI filenames."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    if str(u.query.get("uri", "")).lower() in ("true", "1"):
        return None
    return Path(u.database).absolute()


# A database file and what SQLite keeps beside it (a rollback journal or the WAL files).
SQLITE_SIBLINGS = ("", "-journal", "-wal", "-shm")


def private_sqlite_file(path: Path) -> None:
    """Create the database file with mode 0600 before SQLite opens it (SQLite makes it 0644
    under the usual umask): it holds the netmap signing key and users' refresh tokens, so
    any local user who could read it could forge netmaps. SQLite gives its -wal and -shm
    files the database file's mode. A file left readable by an older version is tightened,
    with a warning: refusing to start would break every existing install, and nobody but
    the server's user has any business reading it."""
    make_private_dirs(path.parent)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
    for f in (path.with_name(path.name + suffix) for suffix in SQLITE_SIBLINGS):
        try:
            mode = stat.S_IMODE(f.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            _tighten(f, mode)


def _tighten(f: Path, mode: int) -> None:
    try:
        f.chmod(0o600)
    except OSError as e:  # not ours (it then is someone's deliberate choice): say so, go on
        log.warning("database file %s is readable by other users (mode %04o) and could "
                    "not be made 0600: %s", f, mode, e.strerror or e)
        return
    log.warning("database file %s was readable by other users (mode %04o): made it 0600, "
                "as it holds the server's signing key", f, mode)


def make_engine(url: str) -> AsyncEngine:
    aurl = async_url(url)
    if aurl.startswith("sqlite"):
        path = sqlite_file(aurl)
        if path is not None:
            private_sqlite_file(path)
        # A fixed pool: every aiosqlite connection is a thread, and overflow connections
        # (opened and closed under load) would start and stop one per burst of requests.
        engine = create_async_engine(aurl, pool_size=32, max_overflow=0)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(aurl, pool_size=10, max_overflow=20)


# PostgreSQL advisory lock keys (one 64-bit namespace per database, shared with any other
# application in it, hence the unlikely values).
MIGRATE_LOCK = 0x776D_6D69_6772_6174
WRITE_LOCK = 0x776D_7772_6974_6573


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


def snapshot_reads(engine: AsyncEngine) -> AsyncEngine:
    """The engine for read-only transactions. On PostgreSQL each one is one consistent
    snapshot (REPEATABLE READ; READ COMMITTED would let every statement see a different
    database); SQLite in WAL mode gives that already from a transaction's first read."""
    opts: dict[str, object] = {READ_ONLY: True}
    if is_postgres(engine):
        opts.update(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return engine.execution_options(**opts)


async def lock_writers(conn: AsyncConnection) -> None:
    """Make this transaction the only writer until it ends, as SQLite's BEGIN IMMEDIATE
    does: each statement after the lock sees every write committed before it, so a
    read-then-write (IPAM, unique names, replace-all) cannot race a writer of another
    replica."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITE_LOCK})


def _upgrade(conn: Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


async def migrate(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        if is_postgres(engine):
            # Replicas starting at once: the first migrates, the others wait and find the
            # schema at head (released at commit). SQLite's BEGIN IMMEDIATE does the same.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK})
        await conn.run_sync(_upgrade)
