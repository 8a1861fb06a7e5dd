"""Enrolment and netmap-convergence benchmark.

A real server (SQLite) runs in a lab namespace; a load generator in the same namespace plays
N agents (HTTP clients, no WireGuard): each enrols with its own key pair and then holds a
netmap stream, applying full maps and deltas exactly as the agent does. Measures enrolments per
second and the time until every stream holds all N peers (the default policy lets every peer
reach every other, so each netmap must end with N-1 peers).

    sudo .venv/bin/python bench/enroll.py [--peers 1000] [--concurrency 50]

Prints a table, then one JSON line: {"peers": N, "enroll_per_s": x, "converge_s": y}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from wiremesh.lab.layout import Layout
from wiremesh.lab.mesh import MeshLab
from wiremesh.lab.netns import Lab, missing_requirements, unwind_on_sigterm
from wiremesh.lab.topology import build_mesh


async def _agent(http, verify, key: str, i: int, n: int, done: dict[int, float],
                 enrolled: list[float], enrolled_ev: asyncio.Event) -> None:
    import httpx

    from wiremesh.wg.keys import generate_private_key, public_key_of

    r = await http.post("/api/v1/enroll", json={
        "setup_key": key, "public_key": public_key_of(generate_private_key()),
        "hostname": f"sim{i}", "endpoints": [f"192.0.2.{2 + i % 250}:{20000 + i}"]})
    r.raise_for_status()
    enrolled.append(time.time())
    enrolled_ev.set()
    token = r.json()["token"]
    # The simulated agent tracks only its peer set: it costs O(delta) per message, so the
    # load generator (1000 agents on one machine) measures the server, not itself.
    peers: set[str] = set()
    # One client per agent, as in reality: httpx's pool scans every connection it holds on
    # each request, so 1000 streams in one pool would make the load generator quadratic.
    async with httpx.AsyncClient(base_url=str(http.base_url), verify=verify,
                                 timeout=httpx.Timeout(60.0, read=300.0)) as own, \
            own.stream("GET", "/api/v1/agent/netmap",
                       headers={"Authorization": f"Bearer {token}"}) as s:
        async for line in s.aiter_lines():
            if not line:
                continue
            msg = json.loads(line)["msg"]  # signed for this agent; the bench trusts it
            if msg["type"] == "full":
                peers = {p["public_key"] for p in msg["netmap"]["peers"]}
            elif msg["type"] == "delta":
                peers.difference_update(msg["delta"]["remove_peers"])
                peers.update(p["public_key"] for p in msg["delta"]["upsert_peers"])
            if len(peers) == n - 1:
                done[i] = time.time()
                return


async def _load(url: str, ca_file: str, key: str, n: int, concurrency: int, worker: int,
                workers: int) -> dict[str, float]:
    """This worker's share of the agents (every `workers`-th); wall-clock times, so the
    parent can merge the workers' figures."""
    import ssl

    import httpx

    verify = ssl.create_default_context(cafile=ca_file)
    # Expire idle connections before the server (5 s) does, or a reused one may be reset.
    limits = httpx.Limits(max_connections=concurrency, keepalive_expiry=2.0)
    done: dict[int, float] = {}
    enrolled: list[float] = []
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, verify=verify,
                                 timeout=httpx.Timeout(60.0, read=300.0)) as http:

        async def one(i: int) -> None:
            ev = asyncio.Event()
            async with sem:
                # The semaphore bounds concurrent enrolments; streams stay open after it.
                task = asyncio.ensure_future(_agent(http, verify, key, i, n, done, enrolled, ev))
                await asyncio.wait([task, asyncio.ensure_future(ev.wait())],
                                   return_when=asyncio.FIRST_COMPLETED)
            await task

        t0 = time.time()
        await asyncio.gather(*(one(i) for i in range(worker, n, workers)))
    return {"start": t0, "last_enrolled": max(enrolled), "last_done": max(done.values())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=50,
                    help="enrolments in flight per load-generator process")
    ap.add_argument("--workers", type=int, default=2,
                    help="load-generator processes (one Python process cannot parse the "
                         "streams of 1000 agents fast enough to load the server)")
    ap.add_argument("--client", nargs=4, metavar=("URL", "CA_FILE", "KEY", "WORKER"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        url, ca_file, key, worker = args.client
        print(json.dumps(asyncio.run(_load(url, ca_file, key, args.peers, args.concurrency,
                                           int(worker), args.workers))))
        return 0
    missing = missing_requirements()
    if missing:
        print(f"this benchmark needs {', '.join(missing)}", file=sys.stderr)
        return 2
    console = Console(stderr=True)
    unwind_on_sigterm()
    with Lab() as lab:
        mesh: MeshLab = build_mesh(lab, Layout.public([]))
        mesh.start_server()
        key = mesh.admin("keys", "create", "bench", "--reusable")["key"]
        console.print(f"server up in lab {lab.id}; {args.peers} simulated agents enrol ...")
        procs = [mesh.server.popen(
            [sys.executable, str(Path(__file__).resolve()), "--peers", str(args.peers),
             "--concurrency", str(args.concurrency), "--workers", str(args.workers),
             "--client", mesh.url, str(mesh.tls.ca_file), key, str(w)],
            log=lab.log_dir / f"worker{w}.log")
            for w in range(args.workers)]
        for p in procs:
            if p.wait(1800) != 0:
                print((lab.log_dir / "worker0.log").read_text()[-2000:], file=sys.stderr)
                return 1
        parts = [json.loads((lab.log_dir / f"worker{w}.log").read_text().strip()
                            .splitlines()[-1]) for w in range(args.workers)]
    start = min(p["start"] for p in parts)
    enrolled = max(p["last_enrolled"] for p in parts)
    done = max(p["last_done"] for p in parts)
    figures = {"enroll_s": enrolled - start, "converge_s": done - enrolled,
               "total_s": done - start}
    enroll_per_s = args.peers / figures["enroll_s"]
    t = Table(title=f"enrolment benchmark ({args.peers} peers, SQLite, default all-to-all "
                    f"policy, {args.workers} load processes)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("enrolment phase", f"{figures['enroll_s']:.2f} s")
    t.add_row("enrolments per second", f"{enroll_per_s:.1f}")
    t.add_row("last enrolment -> every stream holds all peers", f"{figures['converge_s']:.2f} s")
    t.add_row("first enrolment -> converged", f"{figures['total_s']:.2f} s")
    Console().print(t)
    print(json.dumps({"peers": args.peers, "enroll_per_s": round(enroll_per_s, 1),
                      "converge_s": round(figures["converge_s"], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
