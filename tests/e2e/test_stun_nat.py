"""Endpoint discovery through a real NAT: the agent's STUN request leaves from the port that
wireguard-go owns, so the server reports the very mapping WireGuard's own packets get.

A LAN host behind an nftables masquerade (port-preserving) talks to a server on the simulated
internet. wireguard-go on the LAN host sends handshake initiations to the server host, which
records where they come from; the STUN answer read beside wireguard-go must name that same
address and port.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from wiremesh.lab.netns import Lab, missing_requirements

pytestmark = pytest.mark.e2e

if missing := missing_requirements():
    pytest.skip(f"lab needs: {', '.join(missing)}", allow_module_level=True)

WG_PORT = 51820
STUN_PORT = 3478

SERVER = """
import asyncio, socket, sys
from wiremesh.server.stun import start_stun

async def main():
    await start_stun("0.0.0.0", int(sys.argv[1]))
    seen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seen.bind(("0.0.0.0", int(sys.argv[2])))
    seen.setblocking(False)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        _, addr = await loop.sock_recvfrom(seen, 2048)
        print(f"wg {addr[0]}:{addr[1]}", flush=True)

asyncio.run(main())
"""

AGENT = """
import asyncio, sys
from wiremesh.agent.portside import PortSide
from wiremesh.wg.backend import WgPeerConfig
from wiremesh.wg.keys import generate_private_key, public_key_of
from wiremesh.wg.uapi import WireguardGoBackend

ifname, server, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
wg = WireguardGoBackend(ifname)
try:
    wg.set_device(generate_private_key(), port)
    # Initiations toward the server host show where WireGuard's own packets come from.
    wg.set_peers([WgPeerConfig(public_key_of(generate_private_key()), ("100.64.0.9/32",),
                               f"{server}:{port}", 1)], [])

    async def main():
        side = PortSide(port, ifname)
        await side.start()
        try:
            print(f"stun {await side.stun((server, int(sys.argv[4])))}", flush=True)
        finally:
            side.close()
        await asyncio.sleep(30)

    asyncio.run(main())
finally:
    wg.close()
"""


def _nat(lab: Lab, mode: str) -> tuple[str, subprocess.Popen, subprocess.Popen]:
    """(NAT's public address, server process, agent process)."""
    wan = lab.add_switch("i", "203.0.113.0/24")
    lan = lab.add_switch("l", "198.19.1.0/24")
    server, nat, host = lab.add_host("srv"), lab.add_host("nat"), lab.add_host("pc")
    server_ip = lab.connect(server, wan).split("/")[0]
    public = lab.connect(nat, wan).split("/")[0]
    gw = lab.connect(nat, lan).split("/")[0]
    lab.connect(host, lan)
    host.run(["ip", "route", "add", "default", "via", gw])
    nat.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    out_if = lab.link_of(nat, wan)
    nat.run(["nft", f"add table ip nat; add chain ip nat post {{ type nat hook postrouting "
             f"priority srcnat; }}; add rule ip nat post oifname {out_if} masquerade {mode}"])
    srv = subprocess.Popen(server.cmd([sys.executable, "-c", SERVER, str(STUN_PORT),
                                       str(WG_PORT)]), stdout=subprocess.PIPE, text=True)
    assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
    agent = subprocess.Popen(host.cmd([sys.executable, "-c", AGENT, lab.name("wg"), server_ip,
                                       str(WG_PORT), str(STUN_PORT)]),
                             stdout=subprocess.PIPE, text=True)
    return public, srv, agent


def test_stun_answer_is_the_mapping_of_the_wireguard_socket() -> None:
    with Lab() as lab:
        public, srv, agent = _nat(lab, "")
        try:
            assert agent.stdout is not None and srv.stdout is not None
            mapped = agent.stdout.readline().split()
            assert mapped[:1] == ["stun"], mapped
            seen = srv.stdout.readline().split()
            assert seen == ["wg", mapped[1]], (seen, mapped)
            assert mapped[1].split(":")[0] == public
        finally:
            for p in (agent, srv):
                p.kill()
                p.wait()


