"""What a policy apply and a group change cost the server when a JIT gateway's population is
large: CPU seconds of the server process per operation.

    .venv/bin/python bench/policy_apply.py [--peers 550000] [--rounds 3]

The server (`wiremesh server`, plain HTTP on loopback) runs on a SQLite file. Its store holds
`--peers` peers in group `clients` (written straight into SQLite, as bench/jit_gateway.py
does), a gateway, a small group `staff` and the policy `clients -> gateways`. Each round:
a policy apply letting `staff` in too and one taking it out again, and a peer added to
`staff` and removed again. Each operation is measured in three parts, in CPU seconds of the
server process (/proc/PID/stat): the API request, the hub's refresh that follows (until
/healthz shows the new revision), and the gateway's /changes poll that brings it the delta.
Before the rounds, the CPU of one full sync of a gateway (every page) is measured too.
Takes about 4 minutes at 550,000 peers on this 2-core machine (most of it the seeding and the
server's first load); CPU figures, not wall time, are what load leaves alone.

Prints a table, then as the very last line one JSON object with the medians.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.table import Table

from wiremesh.lab.gateway import cpu_s, overlay_ip
from wiremesh.lab.mesh import stop
from wiremesh.lab.netns import unwind_on_sigterm
from wiremesh.wg.keys import generate_private_key, public_key_of

console = Console(stderr=True)
STAFF = 100  # members of `staff` (the first peers)
BASE = """
policies:
  - name: clients-to-gateways
    sources: [clients]
    destinations: [gateways]
"""
STAFF_TOO = BASE + """  - name: staff-to-gateways
    sources: [staff]
    destinations: [gateways]
"""


@contextlib.contextmanager
def server(db: Path) -> Iterator[tuple[httpx.Client, Callable[[], float]]]:
    """A server on `db` (its admin token in admin.token beside it): a client of it, and a
    function giving the CPU seconds it has used."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (db.parent / "server.log").open("a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wiremesh", "server", "--db", f"sqlite:///{db}",
             "--listen", f"127.0.0.1:{port}", "--admin-token-file",
             str(db.parent / "admin.token"), "--no-relay", "--stun-listen", "off"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
            deadline = time.monotonic() + 900
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"the server exited (see {db.parent / 'server.log'})")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get("/healthz").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not answer")
                time.sleep(0.2)
            yield http, lambda: cpu_s(proc.pid)
    finally:
        stop(proc, 15)


def seed(db: Path, n: int) -> None:
    """n peers in `clients` (the first STAFF also in `staff`), straight into SQLite."""
    conn = sqlite3.connect(db)
    with conn:
        first = conn.execute("SELECT coalesce(max(id), 0) FROM peers").fetchone()[0] + 1
        now = str(datetime.now(UTC))
        conn.executemany(
            "INSERT INTO peers(id, name, public_key, overlay_ip, endpoints, listen_port, "
            "token_hash, created_at) VALUES (?, ?, ?, ?, '[]', 51820, ?, ?)",
            ((first + i, f"k{i}", base64.b64encode(os.urandom(32)).decode(), overlay_ip(i),
              f"seed{i:064d}"[-64:], now) for i in range(n)))
        for group, count in (("clients", n), ("staff", min(STAFF, n))):
            gid = conn.execute("SELECT id FROM groups WHERE name = ?", (group,)).fetchone()[0]
            conn.executemany("INSERT INTO group_members(group_id, peer_id) VALUES (?, ?)",
                             ((gid, first + i) for i in range(count)))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'ipam_next'", (n + 16,))
        # A revision with no change logged: the server loads the mesh whole at start.
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
    conn.close()


def revision(db: Path) -> int:
    """The store's revision, read beside the server (its answer to a group change has none)."""
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])
    finally:
        conn.close()


def settle(http: httpx.Client, revision: int) -> None:
    deadline = time.monotonic() + 600
    while http.get("/healthz").json()["revision"] < revision:
        if time.monotonic() > deadline:
            raise SystemExit(f"the hub did not reach revision {revision}")
        time.sleep(0.02)


class Gateway:
    """The gateway's side of the feed: revision and held groups, as its cache keeps them."""

    def __init__(self, http: httpx.Client, token: str) -> None:
        self.http, self.auth = http, {"Authorization": f"Bearer {token}"}
        page = http.get("/api/v1/gateway/known", params={"limit": 1}, headers=self.auth).json()
        self.revision, self.held = page["revision"], page["groups"]

    def full_sync(self) -> int:
        """Every page, as a gateway's first sync reads them; returns the peers read."""
        after, n = 0, 0
        while after is not None:
            page = self.http.get("/api/v1/gateway/known", params={"after": after},
                                 headers=self.auth).json()
            n += len(page["peers"])
            after = page["next_after"]
        return n

    def poll(self) -> dict:
        r = self.http.get("/api/v1/gateway/changes", headers=self.auth, params={
            "since": self.revision, "wait": 0, "held": self.held or [""]})
        body = r.json()
        if body["reset"]:
            raise SystemExit("the gateway was told to sync again: not a delta")
        self.revision, self.held = body["revision"], body["groups"]
        return body


def measure(http: httpx.Client, cpu: Callable[[], float], gw: Gateway,
            change: Callable[[], int]) -> dict[str, float]:
    t0 = cpu()
    rev = change()
    t1 = cpu()
    settle(http, rev)
    t2 = cpu()
    gw.poll()
    t3 = cpu()
    return {"request": t1 - t0, "hub": t2 - t1, "feed": t3 - t2}


def main(peers: int = typer.Option(550_000, min=10, help="Peers in group `clients`"),
         rounds: int = typer.Option(3, min=1, help="Rounds of the four operations")) -> None:
    """The server's CPU seconds per policy apply and group change with a large gateway
    population (about 4 minutes at the default size on this 2-core machine)."""
    unwind_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="wm-policy-") as tmp:
        db = Path(tmp) / "server.db"
        with server(db) as (http, _):
            admin = {"Authorization": f"Bearer {(db.parent / 'admin.token').read_text().strip()}"}
            for group in ("clients", "staff", "gateways"):
                r = http.post("/api/v1/groups", json={"name": group, "members": []},
                              headers=admin)
                assert r.status_code in (200, 201), r.text
            key = http.post("/api/v1/setup-keys", json={
                "name": "gw", "role": "gateway", "auto_groups": ["gateways"]}, headers=admin)
            assert key.status_code == 201, key.text
            gw_token = http.post("/api/v1/enroll", json={
                "setup_key": key.json()["key"], "hostname": "gw",
                "public_key": public_key_of(generate_private_key())}).json()["token"]
            assert http.post("/api/v1/policy/apply", json={"text": BASE},
                             headers=admin).status_code == 200
        console.print(f"seeding {peers} peers")
        seed(db, peers)
        with server(db) as (http, cpu):
            start_cpu = cpu()
            console.print(f"server started ({start_cpu:.1f} s CPU)")
            gw = Gateway(http, gw_token)
            t = cpu()
            synced = gw.full_sync()
            sync_cpu = cpu() - t
            console.print(f"a gateway's full sync of {synced} peers: {sync_cpu:.2f} s CPU")

            def apply(text: str) -> Callable[[], int]:
                def go() -> int:
                    r = http.post("/api/v1/policy/apply", json={"text": text}, headers=admin)
                    assert r.status_code == 200, r.text
                    return int(r.json()["revision"])
                return go

            def member(add: bool) -> Callable[[], int]:
                def go() -> int:
                    last = f"k{peers - 1}"
                    if add:
                        r = http.post("/api/v1/groups/staff/members", json={"peer": last},
                                      headers=admin)
                    else:
                        r = http.delete(f"/api/v1/groups/staff/members/{last}", headers=admin)
                    assert r.status_code == 200, r.text
                    return revision(db)
                return go

            ops = {"policy apply (staff in)": apply(STAFF_TOO),
                   "policy apply (staff out)": apply(BASE),
                   "group member added": member(True),
                   "group member removed": member(False)}
            got: dict[str, list[dict[str, float]]] = {name: [] for name in ops}
            for n in range(rounds):
                for name, op in ops.items():
                    got[name].append(measure(http, cpu, gw, op))
                console.print(f"round {n + 1}/{rounds} done")
    table = Table(title=f"server CPU seconds per operation, {peers} peers (medians of {rounds})")
    for col in ("operation", "request", "hub refresh", "gateway /changes", "total"):
        table.add_column(col, justify="left" if col == "operation" else "right")
    out: dict[str, object] = {"peers": peers, "rounds": rounds, "start_cpu_s": round(start_cpu, 2),
                              "full_sync_cpu_s": round(sync_cpu, 2),
                              "load_avg": os.getloadavg()[0]}
    for name, runs in got.items():
        med = {part: statistics.median(r[part] for r in runs) for part in runs[0]}
        total = sum(med.values())
        table.add_row(name, *(f"{v:.3f}" for v in med.values()), f"{total:.3f}")
        slug = name.split(" (")[0].replace(" ", "_") + (
            "_" + name.split("(")[1].rstrip(")").replace(" ", "_") if "(" in name else "")
        out[f"{slug}_cpu_s"] = round(total, 3)
        out.update({f"{slug}_{part}_cpu_s": round(v, 3) for part, v in med.items()})
    Console().print(table)
    print(json.dumps(out))


if __name__ == "__main__":
    typer.run(main)
