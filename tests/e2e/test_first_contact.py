"""First contact of a new pair over real wireguard-go: both sides have traffic waiting when
they learn of each other (their handshakes would cross), or one side learns a while later
(the early side's initiation is lost). Either way the first ping must be answered within a
second of the moment both sides hold each other, not after WireGuard's 5 s retry.

No server: each side runs the agent's DataPlane (first-contact logic included) on a netmap
handed to it at a chosen moment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from wiremesh.core.wire import NETMAP, Netmap, NetmapPeer
from wiremesh.lab.netns import Lab, missing_requirements
from wiremesh.wg.keys import decode_key, generate_private_key, public_key_of

pytestmark = pytest.mark.e2e

if missing := missing_requirements():
    pytest.skip(f"lab needs: {', '.join(missing)}", allow_module_level=True)

WG_PORT = 51820

SIDE = """
import json, subprocess, sys, time
from wiremesh.agent.dataplane import DataPlane
from wiremesh.agent.state import AgentConfig
from wiremesh.core.wire import NETMAP
from wiremesh.wg.uapi import WireguardGoBackend

c = json.load(open(sys.argv[1]))
cfg = AgentConfig("http://192.0.2.1:1", 1, "x", "t", c["overlay_ip"], 10, c["ifname"],
                  c["listen_port"], [])
dp = DataPlane(WireguardGoBackend(c["ifname"]), cfg, c["private_key"])
dp.start()
netmap = NETMAP.validate_python(c["netmap"])
print("ready", flush=True)
start = float(sys.stdin.readline())  # CLOCK_MONOTONIC is machine-wide
# Traffic waits for the peer before it is configured (so this side would initiate at once).
ping = subprocess.Popen(["ping", "-n", "-q", "-i", "0.05", "-c", "1", "-w", "10",
                         c["peer_ip"]], stdout=subprocess.DEVNULL)
time.sleep(max(0.0, start + c["delay"] - time.monotonic()))
configured = time.monotonic()
dp.sync_peers(netmap)
while ping.poll() is None:
    due = dp.next_due()
    time.sleep(0.01 if due is None else max(0.0, min(due - time.monotonic(), 0.01)))
    if due is not None and due <= time.monotonic():
        dp.sync_peers(netmap)
print(json.dumps({"configured": configured, "replied": time.monotonic(),
                  "ok": ping.returncode == 0}), flush=True)
"""


def _run_pair(lab: Lab, delays: tuple[float, float], tag: str) -> list[dict]:
    sw = lab.add_switch(f"f{tag}", "192.0.2.0/24")
    hosts = [lab.add_host(f"{tag}{i}") for i in range(2)]
    for h in hosts:
        lab.connect(h, sw)
    # Side 0 holds the larger key: it initiates at once, side 1 holds back (core/contact.py).
    keys = sorted((generate_private_key() for _ in hosts),
                  key=lambda k: decode_key(public_key_of(k)), reverse=True)
    ips = ["100.64.0.1", "100.64.0.2"]
    script = lab.log_dir / "side.py"
    script.write_text(SIDE)
    procs = []
    for i, h in enumerate(hosts):
        j = 1 - i
        peer = NetmapPeer(public_key_of(keys[j]), f"p{j}", ips[j], (f"{hosts[j].ip}:{WG_PORT}",))
        netmap = Netmap(version=1, peer_id=i + 1, name=f"p{i}", overlay_ip=ips[i],
                        peers={peer.public_key: peer})
        conf = lab.log_dir / f"{tag}{i}.json"
        conf.write_text(json.dumps({
            "ifname": lab.name(f"w{tag}{i}"), "listen_port": WG_PORT, "private_key": keys[i],
            "overlay_ip": ips[i], "peer_ip": ips[j],
            "netmap": NETMAP.dump_python(netmap, mode="json"),
            "delay": delays[i]}))
        procs.append(subprocess.Popen(h.cmd([sys.executable, str(script), str(conf)]),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True))
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    start = time.monotonic() + 0.2
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(f"{start}\n")
        p.stdin.flush()
    out = []
    for p in procs:
        assert p.stdout is not None
        out.append(json.loads(p.stdout.readline()))
        p.wait(15)
    return out


def test_first_ping_within_a_second() -> None:
    cases = {"both-at-once": (0.0, 0.0), "holder-learns-late": (0.0, 1.5),
             "initiator-learns-late": (1.5, 0.0)}
    with Lab() as lab:
        for i, (case, delays) in enumerate(cases.items()):
            sides = _run_pair(lab, delays, f"r{i}")
            both = max(s["configured"] for s in sides)
            waits = [round(s["replied"] - both, 3) for s in sides]
            assert all(s["ok"] for s in sides), (case, sides)
            assert max(waits) < 1.0, f"{case}: first reply {waits} s after both held the pair"
