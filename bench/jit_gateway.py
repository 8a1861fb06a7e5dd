"""Benchmark: the JIT gateway with 550,000 known peers, against loading them all up front.

Phases, in one lab run (namespaces, real wireguard-go everywhere):
  1. bench set-up: the known peers are written straight into the control server's SQLite
     file (enrolling 550k agents through the API would take hours); the gateway enrols with
     a `gateway` setup key and syncs them from the server's signed feed (`sync_s`)
  2. real wireguard-go clients, each in its own namespace, connect in waves; for each, the
     round trip of its first ping (sent before any handshake, so it includes the whole JIT
     install) - "first packet sent -> first ping reply over the tunnel"
  3. install rate: initiations crafted by our Noise initiator for known keys, blasted from
     many source addresses; installs/s as counted by the gateway's own metrics
  4. once everything was evicted (TTL), the clients connect again while a flood of
     unknown-key initiations (valid mac1, fresh keys) and garbage hits the gateway; the flood
     exceeds each source's rate (and, with a --dh-per-second below what gets past that, the
     global DH budget) and gets cookie replies; a client that finds no token gets one too and
     comes back with mac2 at wireguard-go's 5 s handshake retry (its first reply shows that)
  5. eager baseline: all known peers written into a plain wireguard-go in batches, bounded
     by a timeout and an RSS cap (so it cannot take the machine down)
  6. revocation: a pinging client's peer is deleted on the server (`revoke_ms`)
Prints a table, then one JSON line. The full run with the defaults took 17 minutes on the
2-core development machine under load average 12-24 (seeding and the server's first load of
550k peers ~7 min, the sync ~2 min, the eager baseline ~1 min).

    .venv/bin/python bench/jit_gateway.py                      # the full run (550k, 50)
    .venv/bin/python bench/jit_gateway.py --known 20000 --clients 10 --synthetic 1000
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from wiremesh.gateway import noise
from wiremesh.gateway.admission import AdmissionLimits
from wiremesh.lab import gateway
from wiremesh.lab.figures import percentile
from wiremesh.lab.mesh import MeshLab, wait_until, wiremesh_cmd
from wiremesh.lab.netns import Host, Lab, LabError, missing_requirements, unwind_on_sigterm
from wiremesh.lab.pki import make_server_cert
from wiremesh.lab.topology import Topology
from wiremesh.wg.backend import WgError, WgPeerConfig
from wiremesh.wg.keys import (
    decode_key,
    encode_key,
    generate_private_key,
    public_key_of,
    write_private_key,
)
from wiremesh.wg.uapi import WireguardGoBackend, render_set

SUBNET = "198.51.100"
GW_IP = f"{SUBNET}.1"
PING_TIMEOUT_S = 8.0
console = Console(stderr=True)


def connect_waves(clients: list[gateway.WgClient], waves: int, gap_s: float = 0.0) -> list[float]:
    """First-ping round trips, `waves` groups pinging concurrently, `gap_s` apart; a failure
    counts as the ping timeout (never silently dropped from the percentiles)."""
    size = math.ceil(len(clients) / waves)
    out: list[float] = []
    for w in range(0, len(clients), size):
        if w:
            time.sleep(gap_s)  # pacing the load, not synchronisation
        procs = [subprocess.Popen(c.ping_cmd(PING_TIMEOUT_S), stdout=subprocess.PIPE, text=True)
                 for c in clients[w:w + size]]
        for p in procs:
            ms = gateway.parse_ping_ms(p.communicate()[0])
            out.append(PING_TIMEOUT_S * 1000 if ms is None else ms)
    return out


def installed_or_not(m: dict[str, float]) -> tuple[float, float]:
    """Installs, and initiations the gateway will never install: beyond the DH budget
    (answered with a cookie, which crafted senders ignore) or dropped (e.g. skipped as stale
    when the gateway fell more than a couple of seconds behind)."""
    return (m["wiremesh_gateway_installed_total"],
            sum(v for k, v in m.items()
                if k.startswith(("wiremesh_gateway_cookie_replies_total",
                                 "wiremesh_gateway_dropped_total"))))


def crafted(privs: list[bytes], gw_pub: bytes) -> bytes:
    return b"".join(noise.create_initiation(p, gw_pub) for p in privs)


def eager_baseline(lab: Lab, host: Host, lines: list[tuple[str, str]], timeout_s: float,
                   rss_cap_mb: float, chunk: int = 10_000) -> dict:
    """All known peers into one wireguard-go (device up), chunk by chunk, until done, the
    timeout, the RSS cap or wireguard-go refusing. Bodies are rendered before the clock."""
    bodies = [render_set([WgPeerConfig(k, (ip,)) for k, ip in lines[i:i + chunk]], [])
              for i in range(0, len(lines), chunk)]
    wg = WireguardGoBackend(lab.name("eg"), netns=host.ns)
    try:
        wg.set_device(generate_private_key(), gateway.GATEWAY_PORT)
        host.run(["ip", "link", "set", wg.ifname, "up"])
        base_rss = gateway.rss_mb(wg.proc.pid)
        status, peak = "complete", base_rss
        start = time.monotonic()
        for body in bodies:
            try:
                wg.client.set(body)
            except (WgError, OSError) as e:
                # wireguard-go caps a device at 65536 peers (MaxPeers) and closes the socket.
                status = f"failed: wireguard-go refused more peers ({e.__class__.__name__})"
                break
            peak = max(peak, gateway.rss_mb(wg.proc.pid))
            if peak > rss_cap_mb:
                status = f"stopped at RSS cap {rss_cap_mb:.0f} MB"
                break
            if time.monotonic() - start > timeout_s:
                status = f"stopped at timeout {timeout_s:.0f} s"
                break
        seconds = time.monotonic() - start
        loaded = len(wg.status().peers)
        if status.startswith("failed"):
            status = status.replace("failed:", f"failed after {loaded} peers:")
        elif loaded < len(lines):
            status = f"incomplete: {loaded} of {len(lines)} peers present"
    finally:
        wg.close()
    return {"status": status, "loaded": loaded, "seconds": seconds, "rss_mb": peak,
            "mb_per_1k_peers": (peak - base_rss) / max(1, loaded) * 1000}


GATEWAY_POLICY = """
groups:
  clients: []
  gateways: []
policies:
  - name: clients-to-gateways
    sources: [clients]
    destinations: [gateways]
"""


def seed_server(mesh: MeshLab, keys: list[str]) -> None:
    """Bench set-up, not an operator's path: a server whose store holds every known peer
    (overlay_ip(i) for keys[i]) in group `clients`, and a policy letting `clients` reach
    `gateways`. Enrolling 550k agents through the API would take hours, so the rows go
    straight into its SQLite file while it is stopped (the next start loads them whole)."""
    mesh.start_server()
    policy = mesh.lab.log_dir / "gateway-policy.yaml"
    policy.write_text(GATEWAY_POLICY)
    mesh.admin("policy", "apply", str(policy))
    mesh.stop_server()
    db = sqlite3.connect(mesh.lab.log_dir / "server.db")
    with db:
        first = (db.execute("SELECT coalesce(max(id), 0) FROM peers").fetchone()[0]) + 1
        now = str(datetime.now(UTC))
        db.executemany(
            "INSERT INTO peers(id, name, public_key, overlay_ip, endpoints, listen_port, "
            "token_hash, created_at) VALUES (?, ?, ?, ?, '[]', 51820, ?, ?)",
            ((first + i, f"k{i}", k, gateway.overlay_ip(i), f"seed{i:064d}"[-64:], now)
             for i, k in enumerate(keys)))
        group = db.execute("SELECT id FROM groups WHERE name = 'clients'").fetchone()[0]
        db.executemany("INSERT INTO group_members(group_id, peer_id) VALUES (?, ?)",
                       ((group, first + i) for i in range(len(keys))))
        # Past the seeded addresses; a revision with no change logged makes hubs load whole.
        db.execute("UPDATE meta SET value = ? WHERE key = 'ipam_next'", (len(keys) + 16,))
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
    db.close()
    mesh.start_server(timeout=600)


def enrol_gateway(mesh: MeshLab, host: Host) -> tuple[Path, Path]:
    """A gateway key pair enrolled with a `gateway` setup key: (key file, server state)."""
    key_file, state = mesh.lab.log_dir / "gateway.key", mesh.lab.log_dir / "gateway-server.json"
    write_private_key(key_file, generate_private_key())
    setup_key = mesh.admin("keys", "create", "gw", "--role", "gateway",
                           "--group", "gateways")["key"]
    host.run(wiremesh_cmd("gateway", "enrol", "--server", mesh.url, "--setup-key", setup_key,
                          "--private-key-file", str(key_file), "--server-state", str(state),
                          "--ca-file", str(mesh.tls.ca_file), "--hostname", "gw"))
    return key_file, state


def revoke_ms(mesh: MeshLab, gw: gateway.GatewayProc, client: gateway.WgClient,
              name: str) -> float:
    """Delete a connected client's peer on the server while it pings the gateway every
    10 ms: from the deletion's commit (the API answer) to the last reply it got."""
    # The TTL may have evicted it since its last ping: a fresh session, installed now.
    client.forget_session()
    if client.ping_ms(PING_TIMEOUT_S) is None:
        raise LabError("the client to revoke cannot reach the gateway")
    ping = subprocess.Popen(client.host.cmd(["ping", "-n", "-D", "-i", "0.01", "-W", "1",
                                             gateway.GATEWAY_OVERLAY]),
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # replies flowing for a while before the deletion (not a sync)
        revoked_before = gw.metrics()["wiremesh_gateway_revoked_total"]
        mesh.server.run(wiremesh_cmd("peers", "delete", name, "--server", mesh.url,
                                     "--token", mesh.admin_token,
                                     "--ca-file", str(mesh.tls.ca_file)), timeout=60)
        wait_until(lambda: gw.metrics()["wiremesh_gateway_revoked_total"] > revoked_before,
                   30, "the gateway to revoke the peer", interval=0.02)
        time.sleep(1.5)  # long enough to see that no reply comes any more
    finally:
        ping.terminate()
        out = ping.communicate()[0]
    # The deletion's audit entry is written in its transaction, just before the commit.
    db = sqlite3.connect(mesh.lab.log_dir / "server.db")
    at = db.execute("SELECT at FROM audit_log WHERE action = 'peer.delete' "
                    "ORDER BY id DESC LIMIT 1").fetchone()[0]
    db.close()
    committed = datetime.fromisoformat(at).replace(tzinfo=UTC).timestamp()
    replies = [float(m.group(1)) for m in re.finditer(r"^\[([\d.]+)\].*time=", out, re.M)]
    if not replies or max(replies) < committed - 1.0:
        raise LabError("the client got no replies around the deletion")
    return max(0.0, (max(replies) - committed) * 1000)


def run(known: int, n_clients: int, waves: int, synthetic: int, flood_pps: float,
        flood_unique: int, flood_wave_gap: float, sources: int, ttl: float, dh_per_second: float,
        eager: bool, eager_timeout: float, eager_rss_cap_mb: float) -> dict:
    console.print(f"generating {known} known keys ({n_clients} clients, {synthetic} synthetic)")
    client_keys = [generate_private_key() for _ in range(n_clients)]
    synth_priv = [os.urandom(32) for _ in range(synthetic)]
    keys = [public_key_of(k) for k in client_keys]
    keys += [encode_key(noise.public_key(p)) for p in synth_priv]
    keys += [base64.b64encode(os.urandom(32)).decode() for _ in range(known - len(keys))]
    res: dict = {}
    with Lab() as lab, ExitStack() as cleanup:
        console.print(f"building the lab: server, gateway, {n_clients} clients, a flooder")
        topo = Topology(lab, f"{SUBNET}.0/24")
        gw_host = topo.public_host("gw", f"{GW_IP}/24")
        server = topo.public_host("sv", f"{SUBNET}.3/24")
        mesh = MeshLab(topo, server, make_server_cert(lab.log_dir / "pki", [server.ip]))
        cleanup.callback(mesh.stop_server)
        console.print(f"bench set-up: {known} peers written into the server's SQLite file")
        t = time.monotonic()
        seed_server(mesh, keys)
        res["seed_s"] = time.monotonic() - t
        key_file, server_state = enrol_gateway(mesh, gw_host)
        db = lab.log_dir / "known.db"
        flooder = topo.public_host("fl", f"{SUBNET}.100/24")
        flood_ips = [f"{SUBNET}.{100 + i}" for i in range(sources)]
        for ip in flood_ips[1:]:
            flooder.run(["ip", "addr", "add", f"{ip}/24", "dev",
                         lab.link_of(flooder, topo.internet)])
        gw = gateway.start_gateway(lab, gw_host, db, "--ttl", str(ttl), "--poll-interval", "1",
                                  "--max-active", str(max(100_000, synthetic + n_clients)),
                                  "--dh-per-second", str(dh_per_second),
                                  "--dh-burst", str(dh_per_second),
                                  "--server-state", str(server_state),
                                  timeout_s=120, key_file=key_file)
        cleanup.callback(gw.stop)
        console.print("the gateway syncs its known peers from the server")
        wait_until(lambda: gw.metrics().get("wiremesh_gateway_sync_seconds", 0) > 0, 900,
                   "the first sync", interval=0.5)
        m = gw.metrics()
        res["sync_s"] = m["wiremesh_gateway_sync_seconds"]
        if m["wiremesh_gateway_known_peers"] != known:
            raise LabError(f"synced {m['wiremesh_gateway_known_peers']} of {known} peers")
        gw_pub = decode_key(gw.public_key)
        clients = []
        for i, key in enumerate(client_keys):
            h = topo.public_host(f"c{i}", f"{SUBNET}.{10 + i}/24")
            c = gateway.start_client(h, lab.name(f"w{i}"), key, gateway.overlay_ip(i),
                                    gw.public_key, GW_IP)
            cleanup.callback(c.wg.close)
            clients.append(c)

        console.print("phase 1: clients connect in waves")
        res["connect_ms"] = connect_waves(clients, waves)

        console.print(f"phase 2: {synthetic} crafted initiations for known keys")
        packets = lab.log_dir / "synthetic.bin"
        packets.write_bytes(crafted(synth_priv, gw_pub))
        before = installed_or_not(gw.metrics())
        cpu_before = {name: gateway.cpu_s(pid) for name, pid in gw.pids().items()}
        sent = subprocess.run(gateway.blast_cmd(flooder, packets, GW_IP, 0, 0, flood_ips),
                              check=True, stdout=subprocess.PIPE, text=True, timeout=300)
        wait_until(lambda: sum(installed_or_not(gw.metrics())) >= sum(before) + synthetic,
                   120, "synthetic installs", interval=0.2)
        # From the first crafted packet sent to the gateway's last install (same clock); a
        # coarse poll, so scraping does not compete with the installs it measures.
        m = gw.metrics()
        res["install_s"] = (m["wiremesh_gateway_last_install_time_seconds"]
                            - json.loads(sent.stdout)["started_unix"])
        installed, not_installed = (a - b for a, b in zip(installed_or_not(m), before,
                                                    strict=True))
        res["installs_per_s"] = installed / res["install_s"]
        # CPU per install tells what the rate would be on an idle core (this machine is
        # shared, so the wall-clock rate mostly measures the neighbours).
        res["cpu_ms_per_install"] = {name: (gateway.cpu_s(pid) - cpu_before[name]) * 1000
                                     / max(1.0, installed) for name, pid in gw.pids().items()}
        res["synthetic_not_installed"] = not_installed

        console.print("waiting for the TTL to evict everything")
        wait_until(lambda: gw.metrics()["wiremesh_gateway_active_peers"] == 0, ttl * 3 + 30,
                   "eviction", interval=0.02)

        console.print(f"phase 3: clients reconnect under a {flood_pps:.0f} pkt/s flood")
        strangers = [os.urandom(32) for _ in range(flood_unique)]
        flood = lab.log_dir / "flood.bin"
        garbage = b"".join(b"\x01\x00\x00\x00" + os.urandom(144) for _ in range(flood_unique))
        flood.write_bytes(crafted(strangers, gw_pub) + garbage)
        m0, t0 = gw.metrics(), time.monotonic()
        blaster = subprocess.Popen(gateway.blast_cmd(flooder, flood, GW_IP, flood_pps, 600,
                                                    flood_ips), stdout=subprocess.DEVNULL)
        try:
            wait_until(lambda: gw.metrics()["wiremesh_gateway_initiations_total"]
                       > m0["wiremesh_gateway_initiations_total"] + flood_pps, 30, "the flood",
                       interval=0.02)
            for c in clients:
                c.forget_session()
            res["flood_connect_ms"] = connect_waves(clients, waves, gap_s=flood_wave_gap)
            pids = gw.pids()
            res["rss"] = {name: gateway.rss_mb(pid) for name, pid in pids.items()}
            m1, t1 = gw.metrics(), time.monotonic()
        finally:
            blaster.kill()
            blaster.wait()
        res["flood"] = {k.split('"')[1]: m1[k] - m0.get(k, 0)
                        for k in m1 if k.startswith("wiremesh_gateway_dropped_total")}
        res["flood"]["sniffed"] = (m1["wiremesh_gateway_initiations_total"]
                                   - m0["wiremesh_gateway_initiations_total"])
        res["flood_cookies"] = {k.split('"')[1]: m1[k] - m0.get(k, 0) for k in m1
                                if k.startswith("wiremesh_gateway_cookie_replies_total")}
        res["flood_proven"] = (m1["wiremesh_gateway_cookie_proven_total"]
                               - m0["wiremesh_gateway_cookie_proven_total"])
        res["flood_dh_per_s"] = (m1["wiremesh_gateway_dh_operations_total"]
                                 - m0["wiremesh_gateway_dh_operations_total"]) / (t1 - t0)
        console.print("revocation: a pinging client is deleted on the server")
        try:
            res["revoke_ms"] = revoke_ms(mesh, gw, clients[0], "k0")
        except LabError:
            console.print(gw.log.read_text(errors="replace")[-3000:])
            raise
        gw.stop()

        if eager:
            console.print(f"phase 4: eager baseline, {known} peers into wireguard-go")
            host = lab.add_host("eg")
            lines = [(k, f"{gateway.overlay_ip(i)}/32") for i, k in enumerate(keys)]
            res["eager"] = eager_baseline(lab, host, lines, eager_timeout, eager_rss_cap_mb)
    return res


def report(known: int, n_clients: int, flood_pps: float, res: dict) -> dict:
    conn, flood = res["connect_ms"], res["flood_connect_ms"]
    eager = res.get("eager")
    summary = {
        "known_peers": known,
        "clients": n_clients,
        "first_connect_ms_p50": round(percentile(conn, 50), 2),
        "first_connect_ms_p99": round(percentile(conn, 99), 2),
        "installs_per_s": round(res["installs_per_s"], 1),
        "cpu_ms_per_install": {k: round(v, 3) for k, v in res["cpu_ms_per_install"].items()},
        "synthetic_not_installed": round(res["synthetic_not_installed"]),
        "gateway_rss_mb": round(sum(res["rss"].values()), 1),
        "first_connect_ms_p50_under_flood": round(percentile(flood, 50), 2),
        "first_connect_ms_p99_under_flood": round(percentile(flood, 99), 2),
        "dh_budget_per_s": res["dh_per_second"],
        "dh_per_s_under_flood": round(res["flood_dh_per_s"], 1),
        "cookie_replies_under_flood": round(sum(res["flood_cookies"].values())),
        "cookie_proven_under_flood": round(res["flood_proven"]),
        "eager_load_s": (round(eager["seconds"], 2)
                         if eager and eager["status"] == "complete" else None),
    }
    t = Table(title=f"JIT gateway, {known} known peers, {n_clients} wireguard-go clients")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("seeding the server's store", f"{res['seed_s']:.1f} s")
    t.add_row("sync of known peers from the server", f"{res['sync_s']:.1f} s")
    t.add_row("revocation: deletion committed -> last reply", f"{res['revoke_ms']:.0f} ms")
    t.add_row("first connect p50 / p99 / max",
              f"{percentile(conn, 50):.1f} / {percentile(conn, 99):.1f} / {max(conn):.1f} ms")
    t.add_row("installs (crafted initiations)", f"{res['installs_per_s']:.0f} /s"
              + (f" ({res['synthetic_not_installed']:.0f} got cookies or were dropped)"
                 if res["synthetic_not_installed"] else ""))
    t.add_row("CPU per install", ", ".join(f"{k} {v:.2f} ms"
                                           for k, v in res["cpu_ms_per_install"].items()))
    t.add_row(f"first connect under {flood_pps:.0f} pkt/s flood p50 / p99",
              f"{percentile(flood, 50):.1f} / {percentile(flood, 99):.1f} ms")
    t.add_row("flood: sniffed / dropped by reason",
              f"{res['flood']['sniffed']:.0f} / " + ", ".join(
                  f"{k} {v:.0f}" for k, v in res["flood"].items() if k != "sniffed" and v))
    t.add_row(f"flood: DH operations/s (budget {res['dh_per_second']:.0f}/s)",
              f"{res['flood_dh_per_s']:.0f}")
    t.add_row("flood: cookie replies by limit / proven retries let in",
              ", ".join(f"{k} {v:.0f}" for k, v in res["flood_cookies"].items())
              + f" / {res['flood_proven']:.0f}")
    t.add_row("gateway RSS (daemon + wireguard-go)",
              " + ".join(f"{v:.0f}" for v in res["rss"].values()) + " MB")
    if eager:
        t.add_row("eager: peers loaded", f"{eager['loaded']} ({eager['status']})")
        t.add_row("eager: time until done/stopped", f"{eager['seconds']:.1f} s")
        t.add_row("eager: wireguard-go RSS",
                  f"{eager['rss_mb']:.0f} MB ({eager['mb_per_1k_peers']:.1f} MB per 1k peers)")
    Console().print(t)
    summary.update({
        "eager_status": eager["status"] if eager else "skipped",
        "eager_peers_loaded": eager["loaded"] if eager else 0,
        "eager_seconds_until_stop": round(eager["seconds"], 2) if eager else None,
        "eager_rss_mb": round(eager["rss_mb"], 1) if eager else None,
        "sync_s": round(res["sync_s"], 2),
        "revoke_ms": round(res["revoke_ms"], 1),
        "flood_pps": flood_pps,
    })
    return summary


def main(
    known: int = typer.Option(550_000, "--known", min=100, help="Known peers in the store"),
    clients: int = typer.Option(50, "--clients", min=1, max=80, help="wireguard-go clients"),
    waves: int = typer.Option(5, "--waves", min=1, help="Clients connect in this many waves"),
    synthetic: int = typer.Option(5000, "--synthetic", min=1,
                                  help="Crafted initiations for the install-rate phase"),
    flood_pps: float = typer.Option(20_000, "--flood-pps", min=1.0),
    flood_unique: int = typer.Option(20_000, "--flood-unique", min=1,
                                     help="Distinct unknown-key initiations in the flood"),
    flood_wave_gap: float = typer.Option(0.5, "--flood-wave-gap", min=0.0,
                                         help="Seconds between client waves under flood"),
    sources: int = typer.Option(128, "--sources", min=1, max=150,
                                help="Source addresses of the crafted traffic"),
    ttl: float = typer.Option(3.0, "--ttl", help="The gateway's idle TTL during the run"),
    dh_per_second: float = typer.Option(
        AdmissionLimits.dh_per_second, "--dh-per-second", min=1.0,
        help="The gateway's global DH budget (and burst); the default is the gateway's own, "
             "sized for a deployment (see `wiremesh gateway run --help`): a lower one caps "
             "the install rate, since each install's initiation needs a token"),
    eager: bool = typer.Option(True, "--eager/--no-eager", help="Run the eager baseline"),
    eager_timeout: float = typer.Option(300.0, "--eager-timeout"),
    eager_rss_cap_mb: float = typer.Option(8000.0, "--eager-rss-cap-mb"),
) -> None:
    """The JIT gateway against its goals (phases in the module docstring). Takes about 4
    minutes with --known 20000 --clients 5 --no-eager on this 2-core machine (load 14-22);
    the 550k default took 17 minutes under load 12-24, mostly seeding the server (and its
    first load of 550k peers) and syncing."""
    if missing := missing_requirements():
        console.print(f"error: the benchmark needs {', '.join(missing)}")
        raise typer.Exit(2)
    if known < clients + synthetic:
        console.print("error: --known must be at least --clients + --synthetic")
        raise typer.Exit(2)
    unwind_on_sigterm()
    res = run(known, clients, waves, synthetic, flood_pps, flood_unique, flood_wave_gap, sources,
              ttl, dh_per_second, eager, eager_timeout, eager_rss_cap_mb)
    res["dh_per_second"] = dh_per_second
    summary = report(known, clients, flood_pps, res)
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    typer.run(main)
