"""The agent's side channel with the real kernel: datagrams to the WireGuard port that are not
WireGuard messages reach the agent's socket (with their true source), WireGuard's own stay
with the socket that owns the port, the rule follows the underlay devices as they come, the
input-hook fallback does the same job, and stopping takes the rule away."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from wiremesh.firewall.side import TABLE
from wiremesh.lab.mesh import wait_until
from wiremesh.lab.netns import Host, Lab, Switch, missing_requirements

pytestmark = pytest.mark.e2e

if missing := missing_requirements():
    pytest.skip(f"lab needs: {', '.join(missing)}", allow_module_level=True)

PORT = 51820

# Owns the WireGuard port like wireguard-go; prints what reaches it and what the side sees.
AGENT = """
import asyncio, socket, sys
from wiremesh.agent import portside
from wiremesh.agent.portside import PortSide

async def main():
    wg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    wg.bind(("0.0.0.0", int(sys.argv[1])))
    wg.setblocking(False)
    if len(sys.argv) > 4:
        portside.POLL_S = float(sys.argv[4])  # how often follow() looks without a wake-up
    side = PortSide(int(sys.argv[1]), sys.argv[2], hook=sys.argv[3])
    side.on_probe = lambda payload, ip, port: print("side", payload.decode(), ip, port,
                                                    flush=True)
    await side.start()
    follow = asyncio.create_task(side.follow())
    loop = asyncio.get_running_loop()
    loop.add_reader(wg, lambda: print("wg", wg.recv(64)[:4].hex(), flush=True))
    loop.call_later(20, lambda: print("nothing more in 20 s", flush=True))  # fail, not hang
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    follow.cancel()
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


TRANSPORT = "04000000" + "00" * 28  # a WireGuard transport data message


def _chains(host: Host) -> dict[str, list[str]]:
    """family of the side table -> the devices its chain is bound to ([] on the input hook).
    From nft's text: its JSON leaves out the devices of a multi-device chain (1.0.6). One
    listing of the whole ruleset: the agent may move the table between two listings."""
    found = {}
    ruleset = host.run(["nft", "list", "ruleset"]).stdout
    for table in re.finditer(rf"^table (\S+) {TABLE} \{{$(.*?)^\}}", ruleset, re.M | re.S):
        m = re.search(r"devices? = \{ ([^}]*) \}|device \"?([^\" ;]+)", table.group(2))
        devs = (m.group(1) or m.group(2)).replace('"', "").split(", ") if m else []
        found[table.group(1)] = sorted(devs)
    return found


def _probe(peer: Host, to: str, payload: str) -> None:
    peer.run([sys.executable, "-c", SEND, to, str(PORT), payload])


@dataclass
class SideLab:
    lab: Lab
    net: Switch
    agent: Host
    peer: Host
    agent_ip: str
    peer_ip: str
    proc: subprocess.Popen

    def line(self) -> str:
        assert self.proc.stdout is not None
        return str(self.proc.stdout.readline()).strip()


@contextlib.contextmanager
def side_lab(hook: str, *extra: str, firewall: str = "") -> Iterator[SideLab]:
    """An agent host (with `firewall` loaded first) running AGENT, and a peer, on one switch;
    the agent is ready when this yields."""
    with Lab() as lab:
        net = lab.add_switch("u", "192.0.2.0/24")
        agent, peer = lab.add_host("a"), lab.add_host("p")
        agent_ip = lab.connect(agent, net).split("/")[0]
        peer_ip = lab.connect(peer, net).split("/")[0]
        if firewall:
            subprocess.run(agent.cmd(["nft", "-f", "-"]), input=firewall, text=True,
                           check=True)
        proc = subprocess.Popen(agent.cmd([sys.executable, "-c", AGENT, str(PORT),
                                           lab.name("wg"), hook, *extra]),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            s = SideLab(lab, net, agent, peer, agent_ip, peer_ip, proc)
            assert s.line() == "ready"
            yield s
        finally:
            proc.kill()
            proc.wait()


def _stop(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "closed"


def test_side_channel_on_ingress_follows_new_underlay_devices() -> None:
    with side_lab("ingress") as t:
        lab, agent = t.lab, t.agent
        assert _chains(agent) == {"netdev": [lab.link_of(agent, t.net)]}
        _probe(t.peer, t.agent_ip, TRANSPORT)
        _probe(t.peer, t.agent_ip, b"WMD1 probe".hex())
        assert {t.line() for _ in range(2)} == {"wg 04000000",
                                                 f"side WMD1 probe {t.peer_ip} 4000"}

        # A second network: the rule moves onto its device too, and answers arriving there
        # are moved.
        net2 = lab.add_switch("w", "198.51.100.0/24")
        peer2 = lab.add_host("q")
        agent_ip2 = lab.connect(agent, net2).split("/")[0]
        peer2_ip = lab.connect(peer2, net2).split("/")[0]
        both = sorted([lab.link_of(agent, t.net), lab.link_of(agent, net2)])
        wait_until(lambda: _chains(agent) == {"netdev": both}, 10,
                   "the side chain on the new device")
        _probe(peer2, agent_ip2, b"WMD1 second".hex())
        assert t.line() == f"side WMD1 second {peer2_ip} 4000"

        _stop(t.proc)
        assert _chains(agent) == {}


# A strict host firewall: WireGuard's port, established flows, nothing else.
HOST_FIREWALL = f"""
table inet wmhostfw {{
\tchain input {{
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related accept
\t\tiif lo accept
\t\tudp dport {PORT} accept
\t}}
}}
"""


@pytest.mark.parametrize(("hook", "firewall"), [("input", ""), ("ingress", HOST_FIREWALL)],
                         ids=["asked", "host-firewall"])
def test_side_channel_on_the_input_hook(hook: str, firewall: str) -> None:
    """The fallback, asked for or because a host firewall judges the input hook: there the
    rewrite comes after the firewall's verdict on the WireGuard port, so a firewall that lets
    in only that port still lets the answers through."""
    with side_lab(hook, firewall=firewall) as t:
        assert _chains(t.agent) == {"inet": []}
        _probe(t.peer, t.agent_ip, TRANSPORT)
        _probe(t.peer, t.agent_ip, b"WMD1 probe".hex())
        assert {t.line() for _ in range(2)} == {"wg 04000000",
                                                 f"side WMD1 probe {t.peer_ip} 4000"}
        _stop(t.proc)
        assert _chains(t.agent) == {}


def test_a_host_firewall_started_later_moves_the_rule_to_the_input_hook() -> None:
    """As at boot, when the firewall comes up after the agent: nothing changes in the
    addresses, yet the rule moves behind it, and the answers get through it."""
    with side_lab("ingress", "0.2") as t:
        assert _chains(t.agent) == {"netdev": [t.lab.link_of(t.agent, t.net)]}
        subprocess.run(t.agent.cmd(["nft", "-f", "-"]), input=HOST_FIREWALL, text=True,
                       check=True)
        wait_until(lambda: _chains(t.agent) == {"inet": []}, 10,
                   "the side rule behind the host firewall")
        _probe(t.peer, t.agent_ip, b"WMD1 probe".hex())
        assert t.line() == f"side WMD1 probe {t.peer_ip} 4000"
        _stop(t.proc)
