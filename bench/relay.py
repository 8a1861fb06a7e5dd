"""Benchmark: WireGuard through the relay when UDP is blocked.

Two real wireguard-go peers whose networks drop all UDP (`wiremesh.lab.relay_pair`) reach
each other only through the server's embedded relay, over WebSocket on TLS. Measures ping
round trips over the overlay and a few seconds of TCP bulk transfer (a -> b). Prints a table,
then one JSON line with `relay_mbit`.

    .venv/bin/python bench/relay.py [--seconds 5] [--pings 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from rich.console import Console
from rich.table import Table

from wiremesh.lab.mesh import host_metrics, ping_pairs
from wiremesh.lab.netns import Lab, LabError, unwind_on_sigterm
from wiremesh.lab.relay_pair import relay_pair

PORT = 5201
# Receiver: count bytes until the sender closes; report bytes and the time they took.
SINK = """
import json, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); n = 0; start = None
while data := c.recv(1 << 16):
    start = start or time.monotonic(); n += len(data)
print(json.dumps({"bytes": n, "seconds": time.monotonic() - start}), flush=True)
"""
# Sender: write for the given seconds, then close.
SOURCE = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
buf = b"x" * (1 << 16); end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    c.sendall(buf)
c.close()
"""


def bulk(a, b, seconds: float) -> dict:
    sink = subprocess.Popen(b.host.cmd([sys.executable, "-c", SINK, b.overlay_ip, str(PORT)]),
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    b.host.procs.append(sink)
    assert sink.stdout is not None
    if sink.stdout.readline().strip() != "ready":
        raise LabError("bulk receiver did not start")
    a.host.run([sys.executable, "-c", SOURCE, b.overlay_ip, str(PORT), str(seconds)],
               timeout=seconds + 30)
    out = sink.stdout.readline()
    sink.wait(10)
    return json.loads(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--pings", type=int, default=20)
    args = p.parse_args()
    console = Console(stderr=True)
    unwind_on_sigterm()
    with Lab() as lab, relay_pair(lab) as (mesh, a, b):
        first = ping_pairs([(a.host, b.overlay_ip)], deadline_s=20)
        if first[(a.host.name, b.overlay_ip)] is None:
            raise SystemExit("no ping through the relay within 20 s")
        rtts = [ping_pairs([(a.host, b.overlay_ip)], deadline_s=5)[(a.host.name, b.overlay_ip)]
                for _ in range(args.pings)]
        ok = [r for r in rtts if r is not None]
        got = bulk(a, b, args.seconds)
        mbit = got["bytes"] * 8 / got["seconds"] / 1e6
        m = host_metrics(a.host)
        srv = host_metrics(mesh.server, f"{mesh.url}/metrics", mesh.tls.ca_file)
    result = {
        "relay_mbit": round(mbit, 1),
        "bulk_seconds": round(got["seconds"], 2),
        "bulk_bytes": got["bytes"],
        "ping_ms_p50": round(statistics.median(ok), 2) if ok else None,
        "ping_ms_max": round(max(ok), 2) if ok else None,
        "pings_lost": len(rtts) - len(ok),
        "link_dropped": int(m.get("wiremesh_agent_relay_dropped_total", 0)),
        "relay_forwarded": int(srv.get('wiremesh_relay_frames_total{outcome="forwarded"}', 0)),
        "relay_congested": int(srv.get('wiremesh_relay_frames_total{outcome="congested"}', 0)),
    }
    t = Table(title="WireGuard over the relay (UDP blocked, wss to the server's relay)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for k, v in result.items():
        t.add_row(k, str(v))
    console.print(t)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
