"""The gateway's known peers: public key -> allowed IPs, in a local SQLite file.

A gateway answers for hundreds of thousands of peers but holds only the active few in
WireGuard; the rest live here, one indexed row each, looked up on every authenticated
handshake. The row also keeps the newest TAI64N timestamp accepted for the key, so replay
protection survives restarts and costs no memory per known peer.

Import file format, one peer a line (blank lines and `#` comments skipped):
    <base64 public key> <allowed ip>[,<allowed ip>...]
A key the file names again is skipped: its first line holds.
"""

from __future__ import annotations

import binascii
import ipaddress
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

SCHEMA_VERSION = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS known_peers (
    public_key BLOB PRIMARY KEY,
    allowed_ips TEXT NOT NULL,
    last_ts BLOB
) WITHOUT ROWID
"""
# Version 2: rows synced from a server carry their peer id (the server reports removals by
# id: a deleted peer's key is gone from its store), and the revision the cache holds.
_SCHEMA_V2 = [
    "ALTER TABLE known_peers ADD COLUMN peer_id INTEGER",
    "CREATE INDEX IF NOT EXISTS known_peers_peer_id ON known_peers(peer_id)",
    "CREATE TABLE IF NOT EXISTS sync_state (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
]
# Version 3: the groups the server said the cache admits at that revision (sent back with
# every poll, so a policy change after a restart still comes as a delta). `held_groups` in
# sync_state says they were recorded: an upgraded cache at a revision has none, and an empty
# set is a valid answer too.
_SCHEMA_V3 = [
    "CREATE TABLE IF NOT EXISTS held_groups (name TEXT PRIMARY KEY) WITHOUT ROWID",
]
SyncedRow = tuple[int, bytes, str]  # peer id, raw public key, allowed IPs


class StoreError(ValueError):
    pass


class StoreUnavailable(StoreError):
    """The store cannot be read or written right now (locked by another writer, I/O error);
    the caller retries later instead of giving up."""


@dataclass(frozen=True)
class ImportCount:
    rows: int  # peers the input named, duplicates included
    imported: int  # distinct keys written (new or updated)

    @property
    def duplicates(self) -> int:
        """Rows naming a key an earlier row named: skipped."""
        return self.rows - self.imported


@dataclass(frozen=True)
class KnownPeer:
    allowed_ips: tuple[str, ...]
    last_timestamp: bytes | None  # newest accepted TAI64N, None = never seen


def parse_peer_line(line: str, lineno: int) -> tuple[bytes, str] | None:
    """One import line -> (raw key, normalised allowed IPs); None for blanks and comments."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    fields = text.split()
    if len(fields) != 2:
        raise StoreError(f"line {lineno}: expected '<public key> <allowed ips>', got {text[:60]!r}")
    key_text, ips_text = fields
    try:
        key = binascii.a2b_base64(key_text, strict_mode=True)
    except ValueError:  # binascii.Error, or a plain ValueError for text that is not ASCII
        key = b""
    if len(key) != 32 or key == bytes(32):
        raise StoreError(f"line {lineno}: public key: not a WireGuard key: {key_text[:50]!r}")
    if "%" in ips_text:  # ip_network drops an IPv6 scope (fe80::1%eth0/64) when not strict
        raise StoreError(f"line {lineno}: allowed ips: {ips_text[:80]!r}: a scoped address "
                         "(with %) is no network")
    try:
        nets = [ipaddress.ip_network(ip, strict=False) for ip in ips_text.split(",")]
    except ValueError as e:
        raise StoreError(f"line {lineno}: allowed ips: {e}") from None
    for net in nets:
        if net.prefixlen == 0:
            # WireGuard sends each destination to the peer whose allowed IPs hold it: a
            # peer holding every address would draw the replies meant for all the others.
            raise StoreError(f"line {lineno}: allowed ips: {net} is every address, not one "
                             "peer's: a gateway's peers hold their own addresses")
    return key, ",".join(map(str, nets))


def parse_peer_lines(lines: Iterable[str]) -> Iterator[tuple[bytes, str]]:
    for n, line in enumerate(lines, 1):
        row = parse_peer_line(line, n)
        if row is not None:
            yield row


def _chunks(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _is_busy(e: sqlite3.Error) -> bool:
    return getattr(e, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class KnownPeerStore:
    """One connection; use one store object per thread (SQLite in WAL mode allows that).

    In WAL mode readers never wait for a writer, so lookups go on while another process (an
    import) holds the write lock; writes wait at most `busy_timeout` seconds, then raise
    `StoreUnavailable`. Opening an existing store writes nothing, so it works under a lock too.
    """

    def __init__(self, path: Path, busy_timeout: float = 5.0, cache_mb: int | None = None,
                 ) -> None:
        """`cache_mb`: SQLite's page cache for this connection (default ~2 MB); a writer of
        a whole population needs the table in cache, or each insert of a random key reads
        pages again (550,000 rows: 10 s of CPU with the default, 6 s with 64 MB)."""
        self.path = path
        try:
            self.db = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False,
                                      isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot open peer store: {e}") from None
        try:
            if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            if cache_mb is not None:
                self.db.execute(f"PRAGMA cache_size={-cache_mb * 1024}")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, 2, SCHEMA_VERSION):
                raise StoreError(f"{path}: schema version {version}, expected {SCHEMA_VERSION}")
            if version < SCHEMA_VERSION:
                self.db.execute("BEGIN IMMEDIATE")
                if version == 0:
                    self.db.execute(_SCHEMA)
                for statement in (_SCHEMA_V2 if version < 2 else []) + _SCHEMA_V3:
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self.db.execute("COMMIT")
            self._data_version = self._read_data_version()
        except BaseException as e:
            self.db.close()
            if isinstance(e, sqlite3.Error) and _is_busy(e):
                raise StoreUnavailable(f"{path}: cannot open peer store: {e}") from None
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"{path}: cannot open peer store: {e}") from None
            raise

    def close(self) -> None:
        self.db.close()

    def import_peers(
        self,
        rows: Iterable[tuple[bytes, str]],
        *,
        replace: bool = False,
        on_batch: Callable[[int], None] | None = None,
        batch: int = 20_000,
    ) -> ImportCount:
        """Upsert all rows in one transaction (all or nothing); a key named again is skipped
        (the keys seen are held in memory: about 130 bytes each, 70 MB for 550,000)."""
        read = total = 0
        seen: set[bytes] = set()

        def first_of_each_key() -> Iterator[tuple[bytes, str]]:
            nonlocal read
            for key, ips in rows:
                read += 1
                if key not in seen:
                    seen.add(key)
                    yield key, ips

        cur = self.db.cursor()
        cur.execute("BEGIN")
        try:
            if replace:
                cur.execute("DELETE FROM known_peers")
            for chunk in _chunks(first_of_each_key(), batch):
                total += self._upsert(cur, chunk)
                if on_batch:
                    on_batch(total)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return ImportCount(rows=read, imported=total)

    @staticmethod
    def _upsert(cur: sqlite3.Cursor, chunk: list[tuple[bytes, str]]) -> int:
        # Re-importing keeps the replay timestamp: a peer's identity did not change.
        cur.executemany(
            "INSERT INTO known_peers(public_key, allowed_ips) VALUES (?, ?) "
            "ON CONFLICT(public_key) DO UPDATE SET allowed_ips = excluded.allowed_ips",
            chunk,
        )
        return len(chunk)

    def sync_revision(self) -> int | None:
        """The server revision the synced rows are at; None = never synced (or reset)."""
        row = self.db.execute("SELECT value FROM sync_state WHERE name = 'revision'").fetchone()
        return None if row is None else int(row[0])

    def held_groups(self) -> frozenset[str] | None:
        """The groups admitted at the cache's revision, as the server named them; None when
        not recorded (never synced, or a cache from before they were kept)."""
        if self.db.execute("SELECT 1 FROM sync_state WHERE name = 'held_groups'").fetchone():
            return frozenset(g for (g,) in self.db.execute("SELECT name FROM held_groups"))
        return None

    def replace_synced(self, rows: Iterable[SyncedRow], revision: int,
                       groups: Iterable[str] | None = None) -> tuple[int, list[bytes]]:
        """A full sync, in one transaction: upsert every row (keeping replay timestamps),
        delete every other row, hold `revision` and the admitted `groups`. Readers see the
        old rows until the commit. Returns the number of rows and the keys deleted."""
        total = 0
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            # Diffed in memory against what the cache holds, so only what changed is written
            # (a re-sync of 550,000 unchanged rows writes nothing; an upsert of each cost
            # ~30 µs, a temporary table of the keys seen as much again).
            held = {k: (pid, ips) for k, ips, pid in cur.execute(
                "SELECT public_key, allowed_ips, peer_id FROM known_peers")}
            for chunk in _chunks(rows, 20_000):
                total += len(chunk)
                changed = [r for r in chunk if held.pop(r[1], None) != (r[0], r[2])]
                if changed:
                    self._upsert_synced(cur, changed)
            gone = list(held)
            del held
            cur.executemany("DELETE FROM known_peers WHERE public_key = ?", [(k,) for k in gone])
            self._set_revision(cur, revision, groups)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return total, gone

    def apply_changes(self, upsert: list[SyncedRow], remove: list[int], revision: int,
                      groups: Iterable[str] | None = None) -> list[bytes]:
        """One change from the server, in one transaction (with the `groups` admitted at
        `revision`); returns the keys that are no longer known (removed peers, and the old
        key of a peer whose key changed)."""
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            gone: list[bytes] = []
            ids = remove + [r[0] for r in upsert]
            new_keys = {r[1] for r in upsert}
            for chunk in _chunks(ids, 900):
                gone += [k for (k,) in cur.execute(
                    "SELECT public_key FROM known_peers WHERE peer_id IN "
                    f"({','.join('?' * len(chunk))})", chunk) if k not in new_keys]
            cur.executemany("DELETE FROM known_peers WHERE public_key = ?", [(k,) for k in gone])
            self._upsert_synced(cur, upsert)
            self._set_revision(cur, revision, groups)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return gone

    @staticmethod
    def _upsert_synced(cur: sqlite3.Cursor, rows: list[SyncedRow]) -> None:
        cur.executemany(
            "INSERT INTO known_peers(public_key, allowed_ips, peer_id) VALUES (?, ?, ?) "
            "ON CONFLICT(public_key) DO UPDATE SET allowed_ips = excluded.allowed_ips, "
            "peer_id = excluded.peer_id",
            [(key, ips, pid) for pid, key, ips in rows])

    @staticmethod
    def _set_revision(cur: sqlite3.Cursor, revision: int, groups: Iterable[str] | None) -> None:
        """In the transaction of the rows: a cache never claims a revision, nor groups, it
        does not hold. Unnamed `groups` are forgotten (the server is then asked without)."""
        cur.execute("INSERT INTO sync_state VALUES ('revision', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (revision,))
        cur.execute("DELETE FROM held_groups")
        if groups is None:
            cur.execute("DELETE FROM sync_state WHERE name = 'held_groups'")
            return
        cur.executemany("INSERT INTO held_groups VALUES (?)", [(g,) for g in set(groups)])
        cur.execute("INSERT OR IGNORE INTO sync_state VALUES ('held_groups', 1)")

    def lookup(self, public_key: bytes) -> KnownPeer | None:
        return self.lookup_many([public_key]).get(public_key)

    def lookup_many(self, keys: Iterable[bytes]) -> dict[bytes, KnownPeer]:
        """The known ones among `keys` (at most a few thousand: one statement)."""
        wanted = list(keys)
        try:
            rows = self.db.execute(
                "SELECT public_key, allowed_ips, last_ts FROM known_peers WHERE public_key IN "
                f"({','.join('?' * len(wanted))})", wanted).fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{self.path}: lookup: {e}") from None
        return {row[0]: KnownPeer(tuple(row[1].split(",")), row[2]) for row in rows}

    def record_timestamps(self, stamps: dict[bytes, bytes]) -> None:
        """All or nothing; raises StoreUnavailable (nothing written) when the store is busy."""
        if not stamps:
            return
        try:
            # IMMEDIATE takes the write lock up front, so a busy store fails here, before any
            # statement of the transaction ran.
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(
                    "UPDATE known_peers SET last_ts = ? WHERE public_key = ?",
                    [(ts, key) for key, ts in stamps.items()],
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{self.path}: recording timestamps: {e}") from None

    def count(self) -> int:
        try:
            return int(self.db.execute("SELECT count(*) FROM known_peers").fetchone()[0])
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{self.path}: count: {e}") from None

    def _read_data_version(self) -> int:
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def changed(self) -> bool:
        """True when another connection committed since the last call (e.g. an import ended),
        so answers cached from older contents may be stale."""
        try:
            version = self._read_data_version()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{self.path}: data_version: {e}") from None
        changed, self._data_version = version != self._data_version, version
        return changed
