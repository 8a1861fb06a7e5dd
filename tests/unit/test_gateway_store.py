"""The known-peer store: import parsing, upserts, lookups and persisted replay timestamps."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from wiremesh.gateway.store import (
    ImportCount,
    KnownPeerStore,
    StoreError,
    StoreUnavailable,
    parse_peer_line,
    parse_peer_lines,
)

KEY_A = bytes(range(1, 33))
KEY_B = bytes(range(2, 34))
B64_A = base64.b64encode(KEY_A).decode()
B64_B = base64.b64encode(KEY_B).decode()


@pytest.fixture
def store(tmp_path: Path) -> KnownPeerStore:
    s = KnownPeerStore(tmp_path / "peers.db")
    yield s
    s.close()


def test_parse_line_normalises_networks() -> None:
    assert parse_peer_line(f"  {B64_A}  100.64.0.9/32,fd00::1:5/64 ", 1) == (
        KEY_A, "100.64.0.9/32,fd00::/64")
    assert parse_peer_line("# comment", 2) is None
    assert parse_peer_line("   ", 3) is None


@pytest.mark.parametrize(("line", "field"), [
    ("abc 100.64.0.1/32", "line 4: public key"),
    (f"{base64.b64encode(bytes(32)).decode()} 100.64.0.1/32", "line 4: public key"),
    (f"{B64_A} 100.64.0.300/32", "line 4: allowed ips"),
    (f"{B64_A}", "line 4: expected"),
    (f"{B64_A} 100.64.0.1/32 extra", "line 4: expected"),
    # A non-ASCII key (a byte-order mark before it) raised a traceback; a scoped address
    # lost its scope and was stored as another network.
    (f"\ufeff{B64_A} 100.64.0.1/32", "line 4: public key"),
    (f"{B64_A[:-2]}\u00e9= 100.64.0.1/32", "line 4: public key"),
    (f"{B64_A} fe80::1%eth0/64", "line 4: allowed ips: 'fe80::1%eth0/64': a scoped"),
    (f"{B64_A} 100.64.0.1/32,fd00::%1/8", "line 4: allowed ips: .*a scoped"),
    # A peer holding the default route would draw every other peer's replies.
    (f"{B64_A} 0.0.0.0/0", "line 4: allowed ips: 0.0.0.0/0 is every address"),
    (f"{B64_A} 100.64.0.1/32,::/0", "line 4: allowed ips: ::/0 is every address"),
    (f"{B64_A} 198.51.100.3/0", "line 4: allowed ips: 0.0.0.0/0 is every address"),
])
def test_parse_line_errors_name_line_and_field(line: str, field: str) -> None:
    with pytest.raises(StoreError, match=field):
        parse_peer_line(line, 4)


def test_import_lookup_and_upsert_keeps_timestamp(store: KnownPeerStore) -> None:
    rows = parse_peer_lines([f"{B64_A} 100.64.0.2/32", f"{B64_B} 100.64.0.3/32,198.18.0.0/24"])
    assert store.import_peers(rows) == ImportCount(rows=2, imported=2)
    assert store.lookup(KEY_B).allowed_ips == ("100.64.0.3/32", "198.18.0.0/24")
    assert store.lookup(bytes(32)) is None
    store.record_timestamps({KEY_A: b"\x40" + bytes(11)})
    store.import_peers(parse_peer_lines([f"{B64_A} 100.64.0.7/32"]))
    a = store.lookup(KEY_A)
    assert a.allowed_ips == ("100.64.0.7/32",)
    assert a.last_timestamp == b"\x40" + bytes(11)
    assert store.count() == 2


def test_import_is_all_or_nothing(store: KnownPeerStore) -> None:
    store.import_peers(parse_peer_lines([f"{B64_A} 100.64.0.2/32"]))
    with pytest.raises(StoreError, match="line 2"):
        store.import_peers(parse_peer_lines([f"{B64_B} 100.64.0.3/32", "junk"]), replace=True)
    assert store.count() == 1 and store.lookup(KEY_A) is not None


def test_replace_drops_previous_peers(store: KnownPeerStore) -> None:
    store.import_peers(parse_peer_lines([f"{B64_A} 100.64.0.2/32"]))
    store.import_peers(parse_peer_lines([f"{B64_B} 100.64.0.3/32"]), replace=True)
    assert store.lookup(KEY_A) is None and store.count() == 1


def test_batches_report_progress(store: KnownPeerStore) -> None:
    seen: list[int] = []
    rows = ((i.to_bytes(32, "big"), "100.64.0.2/32") for i in range(1, 2501))
    assert store.import_peers(rows, on_batch=seen.append, batch=1000).imported == 2500
    assert seen == [1000, 2000, 2500]


def test_a_key_named_again_is_skipped_and_counted(store: KnownPeerStore) -> None:
    # The count was of rows: a key named twice counted twice, one peer stored.
    rows = parse_peer_lines([f"{B64_A} 100.64.0.2/32", f"{B64_B} 100.64.0.3/32",
                             f"{B64_A} 100.64.0.9/32", f"{B64_A} 100.64.0.2/32"])
    count = store.import_peers(rows, batch=2)
    assert (count.rows, count.imported, count.duplicates) == (4, 2, 2)
    assert store.lookup(KEY_A).allowed_ips == ("100.64.0.2/32",) and store.count() == 2


@pytest.fixture
def locker(store: KnownPeerStore) -> sqlite3.Connection:
    """A second, real connection to the same file holding the write lock, as an import does."""
    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


def test_locked_store_opens_reads_and_refuses_writes_cleanly(store: KnownPeerStore,
                                                             locker: sqlite3.Connection) -> None:
    other = KnownPeerStore(store.path, busy_timeout=0.01)  # opening writes nothing
    try:
        assert other.lookup(KEY_A) is None and other.count() == 0
        with pytest.raises(StoreUnavailable, match="recording timestamps: database is locked"):
            other.record_timestamps({KEY_A: bytes(12)})
        locker.execute("INSERT INTO known_peers(public_key, allowed_ips) VALUES (?, ?)",
                       (KEY_B, "100.64.0.3/32"))
        assert not other.changed()
        locker.execute("COMMIT")
        assert other.changed() and not other.changed()
        assert other.lookup(KEY_B) is not None
        other.record_timestamps({KEY_B: bytes(12)})  # the lock is gone: writes work again
    finally:
        other.close()


def test_new_store_under_a_lock_is_unavailable_not_an_error(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="database is locked"):
            KnownPeerStore(db, busy_timeout=0.01)
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    KnownPeerStore(db).close()


def test_full_sync_keeps_timestamps_drops_the_rest_and_holds_the_revision(
        store: KnownPeerStore) -> None:
    store.import_peers([(KEY_A, "100.64.0.2/32"), (KEY_B, "100.64.0.3/32")])
    store.record_timestamps({KEY_A: b"t" * 12})
    assert store.sync_revision() is None
    assert store.replace_synced(iter([(7, KEY_A, "100.64.0.9/32")]), revision=41) == (1, [KEY_B])
    assert store.sync_revision() == 41 and store.count() == 1
    a = store.lookup(KEY_A)
    assert a is not None and a.allowed_ips == ("100.64.0.9/32",) and a.last_timestamp == b"t" * 12


def test_a_full_sync_writes_only_what_changed(store: KnownPeerStore) -> None:
    rows = [(7, KEY_A, "100.64.0.2/32"), (8, KEY_B, "100.64.0.3/32")]
    store.replace_synced(rows, 5)
    before = store.db.total_changes
    assert store.replace_synced(iter(rows), 6) == (2, [])
    # The revision's row only.
    assert store.db.total_changes - before == 1 and store.sync_revision() == 6
    before = store.db.total_changes
    assert store.replace_synced(iter([(9, KEY_A, "100.64.0.2/32")]), 7) == (1, [KEY_B])
    assert store.db.total_changes - before == 3  # KEY_A's new id, KEY_B, the revision
    assert store.count() == 1


def test_changes_remove_by_peer_id_and_report_old_keys(store: KnownPeerStore) -> None:
    store.replace_synced([(7, KEY_A, "100.64.0.2/32"), (8, KEY_B, "100.64.0.3/32")], 5)
    key_c = bytes(range(3, 35))
    # Peer 8 deleted; peer 7 got a new key: both old keys are reported gone.
    gone = store.apply_changes([(7, key_c, "100.64.0.2/32")], [8], revision=6)
    assert sorted(gone) == sorted([KEY_A, KEY_B])
    assert store.lookup(KEY_A) is None and store.lookup(KEY_B) is None
    assert store.lookup(key_c) is not None and store.sync_revision() == 6


def test_admitted_groups_are_held_with_the_revision_and_only_with_it(
        store: KnownPeerStore, tmp_path: Path) -> None:
    assert store.held_groups() is None
    store.replace_synced([(7, KEY_A, "100.64.0.2/32")], 5, ["clients"])
    store.apply_changes([(8, KEY_B, "100.64.0.3/32")], [], 6, ["clients", "staff"])
    store.close()
    store = KnownPeerStore(tmp_path / "peers.db")  # a restart
    assert store.held_groups() == {"clients", "staff"} and store.sync_revision() == 6

    def rows_then_crash() -> Iterator[tuple[int, bytes, str]]:
        yield 7, KEY_A, "100.64.0.2/32"
        raise OSError("connection lost while paging")

    # A full sync that dies half-way leaves revision, rows and groups as they were.
    with pytest.raises(OSError):
        store.replace_synced(rows_then_crash(), 9, [])
    assert store.held_groups() == {"clients", "staff"} and store.sync_revision() == 6
    assert store.count() == 2
    store.apply_changes([], [8], 10, [])  # none admitted is an answer too
    assert store.held_groups() == frozenset() and store.count() == 1
    store.replace_synced([(7, KEY_A, "100.64.0.2/32")], 11)  # not named: not known
    assert store.held_groups() is None
    store.close()


def test_a_version_2_store_at_a_revision_is_upgraded_holding_no_groups(
        tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    store = KnownPeerStore(path)
    store.replace_synced([(7, KEY_A, "100.64.0.2/32")], 5)
    store.db.execute("DROP TABLE held_groups")
    store.db.execute("PRAGMA user_version=2")
    store.close()
    store = KnownPeerStore(path)
    assert store.sync_revision() == 5 and store.held_groups() is None
    store.apply_changes([], [], 6, ["clients"])
    assert store.held_groups() == {"clients"}
    store.close()


def test_a_version_1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE known_peers (public_key BLOB PRIMARY KEY, "
                     "allowed_ips TEXT NOT NULL, last_ts BLOB) WITHOUT ROWID")
        conn.execute("INSERT INTO known_peers VALUES (?, '100.64.0.2/32', NULL)", (KEY_A,))
        conn.execute("PRAGMA user_version=1")
    conn.close()
    store = KnownPeerStore(path)
    assert store.lookup(KEY_A) is not None and store.sync_revision() is None
    store.close()
