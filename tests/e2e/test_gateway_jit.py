"""The JIT gateway end to end: the real `wiremesh gateway run` in a lab namespace, real
wireguard-go clients in others, the kernel running our BPF filter on an AF_PACKET socket."""

from __future__ import annotations

import base64
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from wiremesh.gateway import noise
from wiremesh.lab import gateway
from wiremesh.lab.mesh import wait_until
from wiremesh.lab.netns import Host, Lab, missing_requirements
from wiremesh.lab.topology import Topology
from wiremesh.wg.backend import WgPeerConfig
from wiremesh.wg.keys import decode_key, generate_private_key, public_key_of, write_private_key
from wiremesh.wg.uapi import UapiClient, WireguardGoBackend

pytestmark = pytest.mark.e2e

if missing := missing_requirements():
    pytest.skip(f"lab needs: {', '.join(missing)}", allow_module_level=True)

GW_IP = "198.51.100.1"
FILLER = 2000


@dataclass
class Env:
    lab: Lab
    gateway_host: Host
    hosts: list[Host]
    # wireguard-go children must be reaped before the lab deletes their namespaces.
    cleanup: ExitStack

    def client(self, host: Host, ifname: str, key: str, overlay: str,
               gateway_public: str) -> gateway.WgClient:
        c = gateway.start_client(host, ifname, key, overlay, gateway_public, GW_IP)
        self.cleanup.callback(c.wg.close)
        return c


def import_known(lab: Lab, keys: list[str]) -> Path:
    """Known peers through the real CLI: `keys` first, then random filler keys."""
    filler = [base64.b64encode(os.urandom(32)).decode() for _ in range(FILLER)]
    src = lab.log_dir / "peers.txt"
    gateway.write_import_file(src, keys + filler)
    db = lab.log_dir / "peers.db"
    wiremesh = str(Path(sys.executable).with_name("wiremesh"))
    subprocess.run([wiremesh, "gateway", "import", str(src), "--db", str(db), "--json"],
                   check=True, capture_output=True, timeout=60)
    return db


@pytest.fixture
def env() -> Iterator[Env]:
    with Lab() as lab, ExitStack() as cleanup:
        topo = Topology(lab, "198.51.100.0/24")
        gw = topo.public_host("gw", f"{GW_IP}/24")
        hosts = [topo.public_host(f"h{i}", f"198.51.100.{10 + i}/24") for i in range(3)]
        yield Env(lab, gw, hosts, cleanup)


def test_first_handshake_completes_at_once_then_ttl_eviction_and_reinstall(env: Env) -> None:
    key = generate_private_key()
    db = import_known(env.lab, [public_key_of(key)])
    gw = gateway.start_gateway(env.lab, env.gateway_host, db, "--ttl", "1.5",
                              "--poll-interval", "0.2")
    try:
        client = env.client(env.hosts[0], env.lab.name("w0"), key, gateway.overlay_ip(0),
                            gw.public_key)
        first = client.ping_ms(timeout_s=8)
        # Without the gateway's own handshake the reply would come after the 5 s retry.
        assert first is not None and first < 1000, first
        m = gw.metrics()
        assert m["wiremesh_gateway_installed_total"] == 1
        assert m["wiremesh_gateway_active_peers"] == 1
        assert m["wiremesh_gateway_known_peers"] == FILLER + 1
        peer = UapiClient(gw.ifname).get().peers[client.public_key]
        assert peer.allowed_ips == [f"{gateway.overlay_ip(0)}/32"]
        assert peer.persistent_keepalive == 0  # the kick left nothing periodic behind

        m = gw.wait_metric('wiremesh_gateway_evicted_total{reason="ttl"}', 1, timeout_s=10)
        assert m["wiremesh_gateway_active_peers"] == 0
        assert UapiClient(gw.ifname).get().peers == {}

        client.forget_session()  # the client comes back after its session expired
        again = client.ping_ms(timeout_s=8)
        assert again is not None and again < 1000, again
        assert gw.metrics()["wiremesh_gateway_installed_total"] == 2
    finally:
        gw.stop()


def test_strangers_garbage_and_replays_are_dropped_and_counted(env: Env) -> None:
    known = generate_private_key()
    synthetic = generate_private_key()
    db = import_known(env.lab, [public_key_of(known), public_key_of(synthetic)])
    gw = gateway.start_gateway(env.lab, env.gateway_host, db, "--ttl", "60")
    try:
        # A real wireguard-go client whose key the gateway does not know gets nothing back.
        stranger = env.client(env.hosts[1], env.lab.name("w1"), generate_private_key(),
                              gateway.overlay_ip(50), gw.public_key)
        assert stranger.ping_ms(timeout_s=1) is None
        gw.wait_metric('wiremesh_gateway_dropped_total{reason="unknown_key"}', 1, 5)

        # Garbage with the right shape but no valid mac1, then one valid crafted initiation
        # sent twice: installed once, the copy counted as a replay.
        gw_pub = decode_key(gw.public_key)
        crafted = noise.create_initiation(decode_key(synthetic), gw_pub)
        packets = env.lab.log_dir / "packets.bin"
        packets.write_bytes(b"".join(b"\x01\x00\x00\x00" + os.urandom(144) for _ in range(500))
                            + crafted + crafted)
        subprocess.run(gateway.blast_cmd(env.hosts[2], packets, GW_IP, pps=0, duration=0),
                       check=True, capture_output=True, timeout=30)
        m = gw.wait_metric('wiremesh_gateway_dropped_total{reason="replay"}', 1, 5)
        assert m['wiremesh_gateway_dropped_total{reason="bad_mac1"}'] == 500
        assert m["wiremesh_gateway_installed_total"] == 1

        # Known peers are unaffected.
        client = env.client(env.hosts[0], env.lab.name("w0"), known, gateway.overlay_ip(0),
                            gw.public_key)
        ms = client.ping_ms(timeout_s=8)
        assert ms is not None and ms < 1000, ms

        # The guard kept every initiation it did not admit away from wireguard-go, and lets
        # the installed client's endpoint through (the provisioner adds it to the set after
        # wireguard-go has the peer, so the reply can come first).
        def guard_table() -> str:
            return env.gateway_host.run(["nft", "list", "table", "inet",
                                         "wiremesh_gateway"]).stdout

        wait_until(lambda: "198.51.100.10 . " in guard_table(), 5,
                   "the client's endpoint in the guard's set")
        drops = re.search(r"counter packets (\d+)", guard_table())
        assert drops and int(drops.group(1)) >= 501, guard_table()
    finally:
        gw.stop()
    assert "wiremesh_gateway" not in env.gateway_host.run(["nft", "list", "tables"]).stdout


def test_gateway_survives_a_locked_store_and_admits_a_peer_imported_under_the_lock(
        env: Env) -> None:
    known, late = generate_private_key(), generate_private_key()
    db = import_known(env.lab, [public_key_of(known)])
    gw = gateway.start_gateway(env.lab, env.gateway_host, db, "--ttl", "60")
    try:
        # A real second writer, as an import is.
        importer = sqlite3.connect(db, isolation_level=None)
        try:
            importer.execute("BEGIN EXCLUSIVE")
            importer.execute("INSERT INTO known_peers(public_key, allowed_ips) VALUES (?, ?)",
                             (decode_key(public_key_of(late)), f"{gateway.overlay_ip(1)}/32"))
            client = env.client(env.hosts[0], env.lab.name("w0"), known, gateway.overlay_ip(0),
                                gw.public_key)
            ms = client.ping_ms(timeout_s=8)  # lookups go on under the lock
            assert ms is not None and ms < 1000, ms
            newcomer = env.client(env.hosts[1], env.lab.name("w1"), late, gateway.overlay_ip(1),
                                  gw.public_key)
            assert newcomer.ping_ms(timeout_s=1) is None  # its row is not committed yet
            gw.wait_metric('wiremesh_gateway_dropped_total{reason="unknown_key"}', 1, 5)
            # The accepted timestamp cannot be written: hold the lock well past SQLite's 5 s busy
            # timeout, at which the gateway used to exit.
            wait_until(lambda: "op=record_timestamps failures=6" in gw.log.read_text(), 30,
                       "six failed timestamp writes")
            assert gw.proc.poll() is None
            importer.execute("COMMIT")
        finally:
            importer.close()
        ms = newcomer.ping_ms(timeout_s=8)  # admitted at its next initiation: no stale cache
        assert ms is not None, gw.log.read_text()[-2000:]
        assert gw.metrics()["wiremesh_gateway_installed_total"] == 2
        wait_until(lambda: "event=store_available op=record_timestamps" in gw.log.read_text(), 10,
                   "the timestamp write after the lock")
    finally:
        gw.stop()
    reader = sqlite3.connect(db)
    try:
        stamped = reader.execute("SELECT count(*) FROM known_peers WHERE last_ts IS NOT NULL")
        assert stamped.fetchone()[0] == 2
    finally:
        reader.close()


def test_under_a_flood_a_real_client_gets_a_cookie_proves_its_address_and_gets_in(
        env: Env) -> None:
    key = generate_private_key()
    db = import_known(env.lab, [public_key_of(key)])
    # A DH budget the flood keeps empty (one DH per 100 s): every initiation without mac2
    # gets a cookie reply. No per-source limit gets in the way of the flood.
    gw = gateway.start_gateway(env.lab, env.gateway_host, db, "--ttl", "60",
                              "--dh-per-second", "0.01", "--dh-burst", "1",
                              "--rate-per-source", "100000", "--burst-per-source", "100000")
    flood = env.lab.log_dir / "flood.bin"
    gw_pub = decode_key(gw.public_key)
    flood.write_bytes(b"".join(noise.create_initiation(os.urandom(32), gw_pub)
                               for _ in range(200)))
    blaster = subprocess.Popen(gateway.blast_cmd(env.hosts[2], flood, GW_IP, 100, 120),
                               stdout=subprocess.DEVNULL)
    try:
        m = gw.wait_metric('wiremesh_gateway_cookie_replies_total{reason="dh_budget"}', 50, 20)
        assert m["wiremesh_gateway_dh_operations_total"] <= 1
        client = env.client(env.hosts[0], env.lab.name("w0"), key, gateway.overlay_ip(0),
                            gw.public_key)
        # wireguard-go sends its next initiation, now with mac2, at its 5 s handshake retry.
        ms = client.ping_ms(timeout_s=20)
        assert ms is not None, gw.log.read_text()[-2000:]
        m = gw.metrics()
        # The real client's mac2 matched the cookie we sent it: only that let it in, and its
        # DH (two) is all the gateway did on top of the budget while the flood went on.
        assert m["wiremesh_gateway_cookie_proven_total"] >= 1, m
        assert m["wiremesh_gateway_installed_total"] == 1
        assert m["wiremesh_gateway_dh_operations_total"] <= 1 + 2 * m[
            "wiremesh_gateway_cookie_proven_total"]
    finally:
        blaster.kill()
        blaster.wait()
        gw.stop()


def test_our_initiator_is_answered_by_real_wireguard_go(env: Env) -> None:
    """The benchmark's synthetic installs rely on wireguard-go accepting our initiations."""
    responder_key, initiator_key = generate_private_key(), generate_private_key()
    wg = WireguardGoBackend(env.lab.name("wr"), netns=env.gateway_host.ns)
    env.cleanup.callback(wg.close)
    wg.set_device(responder_key, 51999)
    wg.set_peers([WgPeerConfig(public_key_of(initiator_key), ("100.64.9.9/32",))], [])
    env.gateway_host.run(["ip", "link", "set", wg.ifname, "up"])
    packet = noise.create_initiation(decode_key(initiator_key),
                                     decode_key(public_key_of(responder_key)))
    code = ("import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
            "s.settimeout(5); s.sendto(bytes.fromhex(sys.argv[1]),(sys.argv[2],51999)); "
            "print(s.recv(2048).hex())")
    res = env.hosts[0].run([sys.executable, "-c", code, packet.hex(), GW_IP])
    answer = bytes.fromhex(res.stdout.strip())
    assert answer[0] == 2 and len(answer) == 92  # a handshake response
    assert answer[8:12] == packet[4:8]  # addressed to our sender index


def test_two_gateways_share_a_key_and_the_client_resumes_when_one_dies(env: Env) -> None:
    """Two gateways with one key pair and one overlay address serve the same known peers
    behind one service address (198.51.100.50), as keepalived or an anycast route would
    give them. A stock client has one peer entry: when the gateway it talks to dies and the
    address moves to the other, its next handshake is answered there and traffic resumes."""
    vip = "198.51.100.50"
    key = generate_private_key()
    db = import_known(env.lab, [public_key_of(key)])
    key_file = env.lab.log_dir / "shared.key"
    write_private_key(key_file, generate_private_key())
    second = env.hosts[2]
    gws = [gateway.start_gateway(env.lab, h, db, "--ttl", "60", key_file=key_file, name=n)
           for h, n in ((env.gateway_host, "ga"), (second, "gb"))]
    for g in gws:
        env.cleanup.callback(g.stop)
    assert gws[0].public_key == gws[1].public_key
    internet = next(iter(env.lab.switches.values()))
    link = {h.name: env.lab.link_of(h, internet) for h in (env.gateway_host, second)}


    def take_vip(h: Host) -> None:
        # Replies and the gateway's own initiations must come from the service address too,
        # or the client roams to the host's own address and follows no failover.
        h.run(["ip", "addr", "add", f"{vip}/24", "dev", link[h.name]])
        h.run(["ip", "route", "replace", "198.51.100.0/24", "dev", link[h.name], "src", vip])

    take_vip(env.gateway_host)
    c = gateway.start_client(env.hosts[0], env.lab.name("wc"), key, gateway.overlay_ip(0),
                             gws[0].public_key, vip)
    env.cleanup.callback(c.wg.close)
    assert c.ping_ms() is not None
    gws[0].wait_metric("wiremesh_gateway_installed_total", 1, 10)
    # Gateway A dies; its address moves to B (the client's neighbour entry is refreshed, as
    # a gratuitous ARP from keepalived would).
    gws[0].stop()
    env.gateway_host.run(["ip", "addr", "del", f"{vip}/24", "dev", link[env.gateway_host.name]])
    take_vip(second)
    env.hosts[0].run(["ip", "neigh", "flush", "all"])
    # The client keeps its old session until WireGuard gives up on it (no reply for 15 s),
    # then its new initiation reaches B, which installs it.
    wait_until(lambda: c.ping_ms(1.0) is not None, 40, "traffic through the second gateway")
    assert gws[1].metrics()["wiremesh_gateway_installed_total"] >= 1
