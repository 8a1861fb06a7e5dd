"""`wiremesh gateway` commands: keys, import (progress, all-or-nothing), one-line errors."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

from typer.testing import CliRunner

from wiremesh.cli.main import app
from wiremesh.gateway.store import KnownPeerStore
from wiremesh.wg.keys import public_key_of

runner = CliRunner()


def test_keygen_writes_private_key_0600_and_prints_public(tmp_path: Path) -> None:
    out = tmp_path / "gw.key"
    res = runner.invoke(app, ["gateway", "keygen", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["public_key"] == public_key_of(out.read_text().strip())
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    again = runner.invoke(app, ["gateway", "keygen", "--out", str(out)])
    assert again.exit_code == 2 and "--out" in again.output


def test_import_counts_and_reimports(tmp_path: Path) -> None:
    keys = [base64.b64encode(os.urandom(32)).decode() for _ in range(300)]
    src = tmp_path / "peers.txt"
    src.write_text("# known peers\n" + "".join(f"{k} 100.64.{1 + i // 250}.{i % 250}/32\n"
                                               for i, k in enumerate(keys)))
    db = tmp_path / "peers.db"
    res = runner.invoke(app, ["gateway", "import", str(src), "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["known_peers"] == 300
    res = runner.invoke(app, ["gateway", "import", str(src), "--db", str(db), "--json"])
    assert json.loads(res.stdout.strip().splitlines()[-1])["known_peers"] == 300


def test_import_counts_a_key_named_again_once(tmp_path: Path) -> None:
    # "imported 3 peers; 2 known peers": the key named twice was counted twice.
    a, b = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    src = tmp_path / "peers.txt"
    src.write_text(f"{a} 100.64.0.2/32\n{a} 100.64.0.3/32\n{b} 100.64.0.4/32\n")
    db = tmp_path / "peers.db"
    res = runner.invoke(app, ["gateway", "import", str(src), "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert {k: result[k] for k in ("rows", "imported", "duplicates_skipped", "known_peers")} == {
        "rows": 3, "imported": 2, "duplicates_skipped": 1, "known_peers": 2}
    res = runner.invoke(app, ["gateway", "import", str(src), "--db", str(db)])
    assert res.exit_code == 0, res.output
    said = " ".join(res.stdout.split())  # as Rich wrapped it
    assert "read 3 peer lines, skipped 1 naming a key again" in said
    assert "imported 2 peers" in said and "2 known peers" in said


def test_import_bad_line_is_one_line_error_and_nothing_imported(tmp_path: Path) -> None:
    src = tmp_path / "peers.txt"
    good = base64.b64encode(os.urandom(32)).decode()
    src.write_text(f"{good} 100.64.0.2/32\n{good} 100.64.0.999/32\n")
    db = tmp_path / "peers.db"
    res = runner.invoke(app, ["gateway", "import", str(src), "--db", str(db)])
    assert res.exit_code == 2
    assert "line 2: allowed ips" in res.output and "Traceback" not in res.output
    store = KnownPeerStore(db)
    assert store.count() == 0
    store.close()


def test_import_refuses_an_address_two_keys_claim_and_imports_nothing(tmp_path: Path) -> None:
    a, b = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    src = tmp_path / "peers.txt"
    src.write_text(f"{a} 100.64.0.2/32,198.18.1.0/24\n# b\n{b} 100.64.0.3/32,198.18.1.9/24\n")
    db = tmp_path / "peers.db"
    res = runner.invoke(app, ["gateway", "import", str(src), "--db", str(db)])
    assert res.exit_code == 2
    said = " ".join(res.output.split())
    assert "line 3: allowed ips: 198.18.1.0/24 is line 1's too" in said, res.output
    store = KnownPeerStore(db)
    assert store.count() == 0
    store.close()
    # The same key named again keeps its first line (not a clash).
    src.write_text(f"{a} 100.64.0.2/32\n{a} 100.64.0.2/32\n{b} 100.64.0.3/32\n")
    res = runner.invoke(app, ["gateway", "import", str(src), "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["known_peers"] == 2


def test_run_rejects_bad_arguments_before_touching_anything(tmp_path: Path) -> None:
    key = tmp_path / "gw.key"
    key.write_text("not a key\n")
    res = runner.invoke(app, ["gateway", "run", "--private-key-file", str(key), "--db",
                              str(tmp_path / "none.db"), "--address", "100.64.0.1/10"])
    assert res.exit_code == 2 and "--private-key-file" in res.output
    runner.invoke(app, ["gateway", "keygen", "--out", str(key), "--force"])
    res = runner.invoke(app, ["gateway", "run", "--private-key-file", str(key), "--db",
                              str(tmp_path / "none.db"), "--address", "100.64.0.1/10"])
    assert res.exit_code == 2 and "--db" in res.output
    db = tmp_path / "peers.db"
    KnownPeerStore(db).close()
    res = runner.invoke(app, ["gateway", "run", "--private-key-file", str(key), "--db", str(db),
                              "--address", "100.64.0.1"])
    assert res.exit_code == 2 and "--address" in res.output
    res = runner.invoke(app, ["gateway", "run", "--private-key-file", str(key), "--db", str(db),
                              "--address", "100.64.0.1/10", "--metrics-listen", "nope"])
    assert res.exit_code == 2 and "--metrics-listen" in res.output


def test_import_takes_a_file_starting_with_a_byte_order_mark(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    src = tmp_path / "peers.txt"
    src.write_bytes(b"\xef\xbb\xbf" + f"{key} 100.64.1.1/32\n".encode())
    db = tmp_path / "peers.db"
    res = runner.invoke(app, ["gateway", "import", str(src), "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["known_peers"] == 1
