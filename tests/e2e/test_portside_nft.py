"""The agent's side channel with the real kernel: datagrams to the WireGuard port that are not
WireGuard messages reach the agent's socket (with their true source), WireGuard's own stay
with the socket that owns the port, and stopping takes the rule away."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wiremesh.firewall.side import TABLE
from wiremesh.lab.netns import Lab, missing_requirements

pytestmark = pytest.mark.e2e

if missing := missing_requirements():
    pytest.skip(f"lab needs: {', '.join(missing)}", allow_module_level=True)

PORT = 51820

# Owns the WireGuard port like wireguard-go; prints what reaches it and what the side sees.
AGENT = """
import asyncio, socket, sys
from wiremesh.agent.portside import PortSide

async def main():
    wg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    wg.bind(("0.0.0.0", int(sys.argv[1])))
    wg.setblocking(False)
    side = PortSide(int(sys.argv[1]))
    side.on_probe = lambda payload, ip, port: print("side", payload.decode(), ip, port,
                                                    flush=True)
    side.start()
    loop = asyncio.get_running_loop()
    loop.add_reader(wg, lambda: print("wg", wg.recv(64)[:4].hex(), flush=True))
    loop.call_later(20, lambda: print("nothing more in 20 s", flush=True))  # fail, not hang
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    side.close()
    print("closed", flush=True)

asyncio.run(main())
"""

SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 4000))
for payload in sys.argv[3:]:
    s.sendto(bytes.fromhex(payload), (sys.argv[1], int(sys.argv[2])))
"""


def test_side_channel_takes_only_what_is_not_wireguard() -> None:
    with Lab() as lab:
        net = lab.add_switch("u", "192.0.2.0/24")
        agent, peer = lab.add_host("a"), lab.add_host("p")
        agent_ip = lab.connect(agent, net).split("/")[0]
        peer_ip = lab.connect(peer, net).split("/")[0]
        proc = subprocess.Popen(agent.cmd([sys.executable, "-c", AGENT, str(PORT)]),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "ready"
            transport = "04000000" + "00" * 28  # a WireGuard transport data message
            probe = b"WMD1 probe".hex()
            peer.run([sys.executable, "-c", SEND, agent_ip, str(PORT), transport, probe])
            got = {proc.stdout.readline().strip() for _ in range(2)}
            assert got == {"wg 04000000", f"side WMD1 probe {peer_ip} 4000"}
            assert TABLE in agent.run(["nft", "list", "tables"]).stdout
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "closed"
            assert TABLE not in agent.run(["nft", "list", "tables"]).stdout
        finally:
            proc.kill()
            proc.wait()
