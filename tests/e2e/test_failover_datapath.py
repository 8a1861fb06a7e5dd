"""One real failover: a client reaches an internal network through two router peers over
wireguard-go; the active router's wireguard-go is killed and traffic resumes via the other.

No server: static WireGuard config, the client runs the RouteManager (prober + failover state
machine + one-write allowed-IPs move) exactly as the agent does.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from wiremesh.core.wire import NETMAP, Netmap, NetmapPeer, RouteEntry
from wiremesh.lab.netns import Host, Lab, missing_requirements
from wiremesh.wg.keys import generate_private_key, public_key_of
from wiremesh.wg.uapi import UapiClient

pytestmark = pytest.mark.e2e

if missing := missing_requirements():
    pytest.skip(f"lab needs: {', '.join(missing)}", allow_module_level=True)

PREFIX = "198.18.1.0/24"
ECHO_PORT = 7777
WG_PORT = 51820

ROUTER = """
import asyncio, json, sys
from wiremesh.agent.probe_responder import start_responder
from wiremesh.netlink.addresses import ensure_address
from wiremesh.netlink.sysctl import set_forwarding
from wiremesh.wg.backend import WgPeerConfig
from wiremesh.wg.uapi import WireguardGoBackend

c = json.load(open(sys.argv[1]))
wg = WireguardGoBackend(c["ifname"])
wg.set_device(c["private_key"], c["listen_port"])
ensure_address(c["ifname"], c["overlay_ip"], 10)
wg.set_peers([WgPeerConfig(c["client_key"], (c["client_ip"] + "/32",))], [])
set_forwarding(True)

async def main():
    await start_responder(c["overlay_ip"])
    with open(c["pidfile"], "w") as f:
        f.write(str(wg.proc.pid))
    await asyncio.Event().wait()

asyncio.run(main())
"""

CLIENT = """
import asyncio, json, logging, sys
from wiremesh.agent.dataplane import desired_peers
from wiremesh.agent.routes import RouteManager
from wiremesh.core.wire import NETMAP
from wiremesh.netlink.addresses import ensure_address
from wiremesh.wg.uapi import WireguardGoBackend

logging.basicConfig(level=logging.INFO, format="%(created).3f %(name)s %(message)s")
c = json.load(open(sys.argv[1]))

wg = WireguardGoBackend(c["ifname"])
wg.set_device(c["private_key"], c["listen_port"])
ensure_address(c["ifname"], c["overlay_ip"], 10)

async def main():
    # The agent's order: take the netmap, write the peers with the routed prefixes, then run.
    netmap = NETMAP.validate_python(c["netmap"])
    routes = RouteManager(c["ifname"])
    async with routes.applying(netmap):
        want = desired_peers(netmap, routes.routed_prefixes)
        await asyncio.to_thread(wg.set_peers, list(want.values()), [], True)
    await routes.run(wg)

asyncio.run(main())
"""

ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(data + b"|" + addr[0].encode(), addr)
"""

# Sends an echo every 10 ms; logs each answer as "<monotonic time> <source the server saw>",
# which is the internal address of the router that carried it (routers masquerade).
ECHO_CLIENT = """
import select, socket, sys, time
dst = (sys.argv[1], int(sys.argv[2]))
out = open(sys.argv[3], "a", buffering=1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
seq, next_send = 0, time.monotonic()
while True:
    if time.monotonic() >= next_send:
        try:
            s.sendto(str(seq).encode(), dst)
        except OSError:
            pass
        seq += 1
        next_send += 0.01
    ready, _, _ = select.select([s], [], [], max(0.0, next_send - time.monotonic()))
    if ready:
        try:
            data, _ = s.recvfrom(2048)
        except OSError:
            continue
        out.write(f"{time.monotonic():.4f} {data.decode().rsplit('|', 1)[1]}\\n")
"""


def _script(lab: Lab, name: str, text: str) -> str:
    path = lab.log_dir / f"{name}.py"
    path.write_text(text)
    return str(path)


def _config(lab: Lab, name: str, data: dict) -> str:
    path = lab.log_dir / f"{name}.json"
    path.write_text(json.dumps(data))
    return str(path)


def _replies(log: Path) -> list[tuple[float, str]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        t, _, via = line.partition(" ")
        if via:
            out.append((float(t), via))
    return out


def _wait_for(pred, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"a lab process exited with {p.returncode} while {what}"
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s: {what}")


def _internal_ip(lab: Lab, host: Host) -> str:
    return lab.hosts[host.name].addresses[lab.link_of(host, lab.switches["int"])].split("/")[0]


def test_failover_moves_traffic_to_the_standby_router() -> None:
    with Lab() as lab:
        under = lab.add_switch("u", "192.0.2.0/24")
        internal = lab.add_switch("int", "198.18.1.0/24")
        client, r1, r2, res = (lab.add_host(n) for n in ("c", "r1", "r2", "res"))
        for h in (client, r1, r2):
            lab.connect(h, under)
        for h in (r1, r2, res):
            lab.connect(h, internal)

        keys = {h.name: generate_private_key() for h in (client, r1, r2)}
        pub = {n: public_key_of(k) for n, k in keys.items()}
        overlay = {"c": "100.64.0.1", "r1": "100.64.0.2", "r2": "100.64.0.3"}
        py = sys.executable

        res_ip = _internal_ip(lab, res)
        res.popen([py, _script(lab, "echo_server", ECHO_SERVER), str(ECHO_PORT)],
                  log=lab.log_dir / "echo_server.log")

        router_procs = []
        for r in (r1, r2):
            nat = lab.log_dir / f"{r.name}.nft"
            nat.write_text(
                "table ip wmtestnat {\n chain post {\n"
                "  type nat hook postrouting priority srcnat;\n"
                f"  oifname \"{lab.link_of(r, internal)}\" masquerade\n }}\n}}\n"
            )
            r.run(["nft", "-f", str(nat)])
            cfg = _config(lab, r.name, {
                "ifname": lab.name(f"w{r.name}"), "private_key": keys[r.name],
                "listen_port": WG_PORT, "overlay_ip": overlay[r.name],
                "client_key": pub["c"], "client_ip": overlay["c"],
                "pidfile": str(lab.log_dir / f"{r.name}.wgpid"),
            })
            router_procs.append(r.popen([py, _script(lab, "router", ROUTER), cfg],
                                        log=lab.log_dir / f"{r.name}.log"))
        for r in (r1, r2):
            _wait_for(lambda r=r: (lab.log_dir / f"{r.name}.wgpid").exists(), 15,
                      f"{r.name} to come up", router_procs)

        netmap = Netmap(
            version=1, peer_id=1, name="c", overlay_ip=overlay["c"],
            peers={pub[r.name]: NetmapPeer(pub[r.name], r.name, overlay[r.name],
                                           (f"{r.ip}:{WG_PORT}",)) for r in (r1, r2)},
            routes={"internal": RouteEntry("internal", PREFIX,
                                           ((pub["r1"], 10), (pub["r2"], 20)))},
        )
        client_if = lab.name("wc")
        cfg = _config(lab, "client", {
            "ifname": client_if, "private_key": keys["c"], "listen_port": WG_PORT,
            "overlay_ip": overlay["c"], "netmap": NETMAP.dump_python(netmap, mode="json"),
        })
        client_log = lab.log_dir / "client.log"
        agent = client.popen([py, _script(lab, "client", CLIENT), cfg], log=client_log)
        echo_log = lab.log_dir / "echo.log"
        client.popen([py, _script(lab, "echo_client", ECHO_CLIENT), res_ip, str(ECHO_PORT),
                      str(echo_log)])
        procs = [agent, *router_procs]

        r1_ip, r2_ip = _internal_ip(lab, r1), _internal_ip(lab, r2)
        _wait_for(lambda: any(via == r1_ip for _, via in _replies(echo_log)), 20,
                  "echo replies via the preferred router r1", procs)

        wg_pid = int((lab.log_dir / "r1.wgpid").read_text())
        killed_at = time.monotonic()
        os.kill(wg_pid, signal.SIGKILL)

        _wait_for(lambda: any(t > killed_at and via == r2_ip for t, via in _replies(echo_log)),
                  15, "echo replies via the standby router r2 after r1 died", [agent])

        # The prefix moved in the client's WireGuard config: only r2 carries it now.
        peers = UapiClient(client_if).get().peers
        assert PREFIX in peers[pub["r2"]].allowed_ips
        assert PREFIX not in peers[pub["r1"]].allowed_ips
        assert f"{overlay['r1']}/32" in peers[pub["r1"]].allowed_ips
        assert "active=" in client_log.read_text()

        replies = _replies(echo_log)
        before = max(t for t, _ in replies if t <= killed_at)
        after = min(t for t, via in replies if t > killed_at and via == r2_ip)
        print(f"\nfailover interruption (last reply before kill -> first via r2): "
              f"{(after - before) * 1000:.0f} ms")
