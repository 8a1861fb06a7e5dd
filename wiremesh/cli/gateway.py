"""`wiremesh gateway`: the JIT gateway - keys, bulk import of known peers, and the daemon."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import httpx
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from wiremesh.agent import client
from wiremesh.agent.connection import Trust, TrustError
from wiremesh.agent.state import read_json, write_private_json
from wiremesh.cli.common import (
    CaFileOpt,
    InsecureOpt,
    JsonOpt,
    console,
    err_console,
    fail,
    print_json,
    read_text,
    setup_logging,
    split_listen,
)
from wiremesh.core.wire import fingerprint
from wiremesh.gateway import status as gateway_status
from wiremesh.gateway.admission import AdmissionLimits
from wiremesh.gateway.guard import GuardError
from wiremesh.gateway.store import KnownPeerStore, StoreError, parse_peer_line
from wiremesh.gateway.sync import SyncConfig
from wiremesh.wg.backend import WgError
from wiremesh.wg.keys import BadKey, decode_key, generate_private_key, public_key_of
from wiremesh.wg.keys import write_private_key as save_private_key

app = typer.Typer(
    help="JIT gateway: a WireGuard endpoint for hundreds of thousands of known peers that "
    "installs each one on its first handshake and evicts it when idle.",
    no_args_is_help=True,
)

DbOpt = typer.Option(..., "--db", help="SQLite file of known peers (created by `import`)")


@app.command("keygen")
def keygen(
    out: Path = typer.Option(..., "--out", help="Where to write the private key (mode 0600)"),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing key file"),
    as_json: bool = JsonOpt,
) -> None:
    """Create the gateway's key pair; prints the public key clients must be configured with."""
    if out.exists() and not force:
        fail(f"--out: {out} exists (use --force to replace it)")
    key = generate_private_key()
    try:
        save_private_key(out, key)
    except OSError as e:
        fail(f"--out: cannot write {out}: {e.strerror}")
    pub = public_key_of(key)
    if as_json:
        print_json({"private_key_file": str(out), "public_key": pub})
    else:
        console.print(pub)


def _rows(f: BinaryIO, progress: Progress, task: object) -> Iterator[tuple[bytes, str]]:
    pending = 0
    # Each network with the key and line that named it first: WireGuard gives an address to
    # one peer only (the one installed last would take it from the other).
    owners: dict[str, tuple[bytes, int]] = {}
    for n, raw in enumerate(f, 1):
        pending += len(raw)
        if pending >= 1 << 20:
            progress.advance(task, pending)  # type: ignore[arg-type]
            pending = 0
        try:
            # A byte order mark (editors on Windows write one) is no part of the first key.
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            raise StoreError(f"line {n}: not UTF-8 text") from None
        row = parse_peer_line(line, n)
        if row is not None:
            for net in row[1].split(","):
                key, first = owners.setdefault(net, (row[0], n))
                if key != row[0]:
                    raise StoreError(f"line {n}: allowed ips: {net} is line {first}'s too, under "
                                     "another key: an address belongs to one peer")
            yield row
    progress.advance(task, pending)  # type: ignore[arg-type]


@app.command("import")
def import_peers(
    file: Path = typer.Argument(..., help="One peer a line: '<base64 public key> <ip/len>[,...]'"),
    db: Path = DbOpt,
    replace: bool = typer.Option(False, "--replace", help="Drop every known peer first"),
    as_json: bool = JsonOpt,
) -> None:
    """Bulk-load known peers into the store, all or nothing, with a progress bar on stderr."""
    try:
        size = file.stat().st_size
        f = file.open("rb")
    except OSError as e:
        fail(f"FILE: cannot read {file}: {e.strerror}")
    started = time.monotonic()
    try:
        store = KnownPeerStore(db)
    except StoreError as e:
        fail(f"--db: {e}")
    columns = (TextColumn("importing"), BarColumn(), TextColumn("{task.fields[peers]} peers"),
               TimeElapsedColumn())
    try:
        with f, Progress(*columns, console=err_console, transient=True) as progress:
            task = progress.add_task("import", total=size, peers=0)
            count = store.import_peers(
                _rows(f, progress, task), replace=replace,
                on_batch=lambda n: progress.update(task, peers=n),
            )
        total = store.count()
    except StoreError as e:
        fail(f"FILE: {e}")
    finally:
        store.close()
    result = {"rows": count.rows, "imported": count.imported,
              "duplicates_skipped": count.duplicates, "known_peers": total,
              "seconds": round(time.monotonic() - started, 2)}
    if as_json:
        print_json(result)
    else:
        skipped = (f", skipped {count.duplicates} naming a key again (its first line holds)"
                   if count.duplicates else "")
        console.print(f"read {count.rows} peer lines{skipped}; imported {count.imported} peers "
                      f"in {result['seconds']} s; {total} known peers in {db}")


def _read_private_key(path: Path) -> str:
    key = read_text(path, "--private-key-file").strip()
    try:
        decode_key(key)
    except BadKey as e:
        fail(f"--private-key-file: {e}")
    return key


def _server_state(path: Path, private_key: str) -> SyncConfig:
    try:
        data = read_json(path)
        if not isinstance(data.get("server_key"), str):
            fail(f"--server-state: {path} pins no server key (written by an older version): "
                 "enrol again with `gateway enrol`")
        decode_key(data["server_key"])
        return SyncConfig(server=data["server"], token=data["token"],
                          server_key=data["server_key"], peer_key=public_key_of(private_key),
                          trust=Trust(data.get("ca_file"), bool(data.get("insecure"))))
    except OSError as e:
        fail(f"--server-state: cannot read {path}: {e.strerror} (enrol with `gateway enrol`)")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        fail(f"--server-state: {path} is not a gateway enrolment ({e.__class__.__name__}: {e})")


# A server holding hundreds of thousands of peers answers slowly while it recompiles after
# a change (the gateway's own enrolment is one); the defaults of agents (15 s) are too short.
ENROL_TIMEOUT_S = 60.0


@app.command("enrol")
def enrol(
    server: str = typer.Option(..., "--server", help="Control server URL"),
    setup_key: str = typer.Option(..., "--setup-key", envvar="WIREMESH_SETUP_KEY",
                                  help="A setup key of role gateway"),
    private_key_file: Path = typer.Option(..., "--private-key-file",
                                          help="The gateway's private key (see `keygen`)"),
    state: Path = typer.Option(..., "--server-state",
                               help="Where to keep the enrolment (token; mode 0600)"),
    hostname: str = typer.Option(socket.gethostname(), "--hostname"),
    server_fingerprint: str | None = typer.Option(
        None, "--server-fingerprint",
        help="The server key's fingerprint (`wiremesh server` prints it): checked before "
             "the setup key is sent"),
    ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt, as_json: bool = JsonOpt,
) -> None:
    """Enrol this gateway with the server (its WireGuard key is its identity) and pin the
    server's signing key; `run --server-state` then follows the peers the server lets in,
    refusing any answer not signed with that key."""
    key = _read_private_key(private_key_file)
    trust = Trust(str(ca_file) if ca_file else None, insecure)
    try:
        trust.check(server)
        pinned = asyncio.run(client.server_key(server, trust, ENROL_TIMEOUT_S)).get(
            "public_key")
        try:
            got_fp = fingerprint(str(pinned))
        except ValueError:
            fail(f"the server's signing key {str(pinned)[:60]!r} is malformed", code=1)
        if server_fingerprint is not None and got_fp != server_fingerprint:
            fail(f"server key fingerprint is {got_fp}, expected {server_fingerprint}: "
                 "refusing to enrol", code=1)
        got = asyncio.run(client.enroll(server, {
            "setup_key": setup_key, "public_key": public_key_of(key), "hostname": hostname,
            "listen_port": 51820, "endpoints": []}, trust, ENROL_TIMEOUT_S))
        if got.get("server_key", {}).get("public_key") != pinned:
            fail("the enrolment answer names another server key than the server showed "
                 "before; refusing it", code=1)
        write_private_json(state, {"server": server, "token": got["token"],
                                   "peer_id": got["peer_id"], "name": got["name"],
                                   "overlay_ip": got["overlay_ip"], "server_key": pinned,
                                   "ca_file": trust.ca_file, "insecure": insecure})
    except TrustError as e:
        fail(f"--server: {e}")
    except client.ServerRefused as e:
        fail(str(e), code=1)
    except (httpx.HTTPError, OSError) as e:
        fail(f"cannot reach the server at {server}: {e or e.__class__.__name__}", code=1)
    out = {"name": got["name"], "peer_id": got["peer_id"], "overlay_ip": got["overlay_ip"],
           "server_state": str(state)}
    if as_json:
        print_json(out)
    else:
        console.print(f"enrolled as gateway {got['name']} ({got['overlay_ip']}); "
                      f"run with --server-state {state}")


@app.command("status")
def status(
    metrics_url: str = typer.Option("http://127.0.0.1:9586/metrics", "--metrics",
                                    help="The gateway's /metrics URL (run --metrics-listen)"),
    interval: float = typer.Option(1.0, "--interval", min=0.1, max=60,
                                   help="Seconds between the two scrapes the rates come from"),
    as_json: bool = JsonOpt,
) -> None:
    """Known and active peers, installs/s, refusals by reason (from the gateway's metrics)."""
    try:
        first = gateway_status.scrape(metrics_url)
        time.sleep(interval)  # the rate's measuring window, not a synchronisation
        second = gateway_status.scrape(metrics_url)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:
        fail(f"--metrics: cannot read {metrics_url}: {e or e.__class__.__name__}", code=1)
    out = gateway_status.summary(first, second, interval)
    if as_json:
        print_json(out)
        return
    console.print(f"known {out['known']:.0f}  active {out['active']:.0f}  "
                  f"installs/s {out['installs_per_s']:.1f}  installed {out['installed']:.0f}  "
                  f"revoked {out['revoked']:.0f}  sync revision {out['sync_revision']:.0f}")
    refusals = ", ".join(f"{k} {v:.0f}" for k, v in out["refused"].items() if v) or "none"
    console.print(f"refused: {refusals}")


@app.command("run")
def run(
    private_key_file: Path = typer.Option(..., "--private-key-file",
                                          help="The gateway's private key (see `keygen`)"),
    db: Path = DbOpt,
    address: str = typer.Option(..., "--address",
                                help="Overlay address of the gateway, e.g. 100.64.0.1/10"),
    ifname: str = typer.Option("wmgw0", "--ifname", help="WireGuard interface name"),
    listen_port: int = typer.Option(51820, "--listen-port", min=1, max=65535),
    ttl: float = typer.Option(300.0, "--ttl", min=0.1, help="Evict peers idle this many seconds"),
    max_active: int = typer.Option(100_000, "--max-active", min=1,
                                   help="Most peers installed at once (LRU beyond)"),
    poll_interval: float | None = typer.Option(
        None, "--poll-interval", min=0.05, help="Status poll period [default: TTL/4, 0.25-30 s]"),
    capture_interface: str | None = typer.Option(
        None, "--capture-interface", help="Sniff only this interface [default: all]"),
    metrics_listen: str | None = typer.Option(
        None, "--metrics-listen", help="Serve Prometheus /metrics on HOST:PORT"),
    rate_per_source: float = typer.Option(20.0, "--rate-per-source", min=0.01,
                                          help="Handshakes/s allowed per source IP (IPv6 /64)"),
    burst_per_source: float = typer.Option(40.0, "--burst-per-source", min=1.0),
    sources_tracked: int = typer.Option(65_536, "--sources-tracked", min=1,
                                        help="Size of the per-source token-bucket table"),
    negative_cache: int = typer.Option(65_536, "--negative-cache", min=1,
                                       help="Unknown keys / refused handshakes remembered"),
    dh_per_second: float = typer.Option(
        AdmissionLimits.dh_per_second, "--dh-per-second", min=0.01,
        help="Initiations given a Diffie-Hellman per second, all sources together; beyond "
             "it (or a source's rate) initiators must prove their address with a cookie. "
             "Size it to the installs/s to serve plus active peers / 120 (their rekeys), "
             "below what one core verifies (about 4,000-5,000/s)"),
    dh_burst: float = typer.Option(AdmissionLimits.dh_burst, "--dh-burst", min=1.0),
    guard: bool = typer.Option(
        True, "--guard/--no-guard",
        help="nftables rule so wireguard-go only receives initiations the gateway admitted"),
    server_state: Path | None = typer.Option(
        None, "--server-state",
        help="Follow the known peers of the server this gateway enrolled with (`enrol`); "
             "--db is then its cache, created if missing"),
    as_json: bool = JsonOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the gateway until SIGINT/SIGTERM (root). Prints a ready line when serving."""
    from wiremesh.gateway.service import GatewayConfig, run_gateway

    key = _read_private_key(private_key_file)
    sync = _server_state(server_state, key) if server_state is not None else None
    if sync is None and not db.exists():
        fail(f"--db: {db} does not exist (fill it with `wiremesh gateway import`, or follow "
             "a server with --server-state)")
    try:
        ipaddress.ip_interface(address)
        if "/" not in address:
            raise ValueError
    except ValueError:
        fail(f"--address: not an address with prefix length (e.g. 100.64.0.1/10): {address!r}")
    if len(ifname) > 15:
        fail("--ifname: at most 15 characters")
    cfg = GatewayConfig(
        private_key=key, db=db, address=address, ifname=ifname, listen_port=listen_port,
        ttl=ttl, max_active=max_active, poll_interval=poll_interval,
        capture_ifname=capture_interface,
        metrics_listen=(split_listen(metrics_listen, "--metrics-listen")
                        if metrics_listen else None),
        guard=guard, sync=sync,
        limits=AdmissionLimits(rate_per_source=rate_per_source,
                               burst_per_source=burst_per_source,
                               sources_tracked=sources_tracked,
                               negative_cache_size=negative_cache,
                               dh_per_second=dh_per_second, dh_burst=dh_burst),
    )
    setup_logging(verbose)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def ready(info: dict) -> None:
        if as_json:
            print_json(info)
        else:
            console.print(f"gateway {info['public_key']} serving {info['known_peers']} known "
                          f"peers on {info['ifname']} port {info['listen_port']}")
        sys.stdout.flush()

    try:
        run_gateway(cfg, stop, on_ready=ready)
    except (StoreError, WgError, GuardError, OSError) as e:
        fail(str(e), code=1)
