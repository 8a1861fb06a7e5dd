"""Control plane at scale: thousands of agents on one server process, or on replicas.

    .venv/bin/python bench/scale.py [--agents 10000] [--db sqlite|postgresql] [--replicas N]

Real `wiremesh server` processes serve HTTPS on loopback (a throw-away CA, as in the lab);
replicas share one PostgreSQL database (--pg-url, default $WIREMESH_TEST_PG_URL; its schema
is dropped first) or one SQLite file. Several load processes play the agents: each enrols
with its own key pair through a setup key naming its groups (`wiremesh.lab.org`: teams and
services in sites, ~240 groups and ~650 policies at 10,000 peers, not all-to-all), then
holds a netmap stream over a lean HTTP/1.1 client (one TLS connection per agent, as agents
do), verifies every line against the pinned server key and applies full maps and deltas with
the agent's own code.

Measured:
- enrolments per second while the streams of those already enrolled stay open;
- propagation of single changes (a peer added to a group, a policy edited, a peer deleted),
  from its commit (its audit entry's time) to the last affected stream holding the new
  netmap (p50, p99);
- server RSS and CPU while idle with every stream open (over one keepalive round);
- with replicas: one is killed (SIGKILL); the time until every agent it served holds a stream
  on another replica again, and how many of them needed a full map;
- the worst case: the default all-to-all policy with 2,000 agents, from the last enrolment
  to every netmap holding every other peer.

Prints a table, then as the very last line one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import queue
import random
import resource
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from rich.console import Console
from rich.table import Table

from wiremesh.agent.client import PeerDeleted
from wiremesh.agent.runner import ResyncNeeded, jittered, next_netmap
from wiremesh.core.models import MeshState, Policy, PortRange
from wiremesh.core.netmap import digest
from wiremesh.core.policyfile import export
from wiremesh.core.wire import (
    BadMessage,
    FullMessage,
    Netmap,
    PingMessage,
    agent_mac_key,
    enroll_proof,
    open_line,
    parse_message,
    verify_stream_key,
)
from wiremesh.lab.gateway import rss_mb
from wiremesh.lab.netns import unwind_on_sigterm
from wiremesh.lab.org import Org, org_mesh
from wiremesh.lab.pki import make_server_cert
from wiremesh.wg.keys import generate_private_key, public_key_of

KEEPALIVE_ROUND_S = 16.0  # the server's keepalive interval (15 s) and a margin
QUIET_S = 1.0  # a change has reached every stream once no update came for this long
CHANGE_TIMEOUT_S = 30.0
console = Console(stderr=True)

# --- a lean HTTP/1.1 client (one connection per request or stream) ---------------------------


class HttpError(Exception):
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status, self.headers = status, headers


async def _request(url: str, ctx: ssl.SSLContext, method: str, path: str,
                   headers: dict[str, str], body: bytes | None = None,
                   ) -> tuple[int, dict[str, str], asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    r, w = await asyncio.open_connection(host, port, ssl=ctx, limit=1 << 20)
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}",
            *(f"{k}: {v}" for k, v in headers.items())]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    w.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
    status = int((await r.readline()).split()[1])
    got: dict[str, str] = {}
    while (line := await r.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode("latin-1").partition(":")
        got[k.strip().lower()] = v.strip()
    return status, got, r, w


async def _chunks(r: asyncio.StreamReader) -> Any:
    while True:
        size = int((await r.readline()).split(b";")[0], 16)
        if size == 0:
            return
        data = await r.readexactly(size)
        await r.readexactly(2)
        yield data


async def _body(r: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await r.readexactly(int(headers["content-length"]))
    return b"".join([c async for c in _chunks(r)])


def _close(w: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        w.close()


async def post_json(url: str, ctx: ssl.SSLContext, path: str, doc: dict[str, Any]) -> Any:
    status, headers, r, w = await _request(url, ctx, "POST", path, {"Connection": "close"},
                                           json.dumps(doc).encode())
    try:
        body = await _body(r, headers)
    finally:
        _close(w)
    if status >= 300:
        raise HttpError(status, headers, body)
    return json.loads(body)


# --- simulated agents (one load process) ------------------------------------------------------


@dataclass
class Sim:
    idx: int
    setup_key: str
    home: int  # the replica it enrols on and streams from first
    private: str = field(default_factory=generate_private_key)
    public: str = ""
    token: str = ""
    server_key: str = ""
    mac_key: bytes | None = None  # agreed with the server's stream key, as the agent does
    held: Netmap | None = None
    replica: int = -1  # where its stream is open (-1: none)
    connects: int = 0
    done: bool = False
    # When its stream last broke, and when it then asked again and was answered.
    broke: float = 0.0
    asked: float = 0.0
    answered: float = 0.0
    _digest: tuple[Netmap, str] | None = None

    def __post_init__(self) -> None:
        self.public = public_key_of(self.private)

    def held_digest(self) -> str:
        """The digest of the held netmap (sent when resuming), computed once per netmap."""
        assert self.held is not None
        if self._digest is None or self._digest[0] is not self.held:
            self._digest = (self.held, digest(self.held))
        return self._digest[1]


class Load:
    """One load process's agents, and what they saw (reported to the controller)."""

    def __init__(self, urls: list[str], ca_file: str, expect_peers: int,
                 stream_key: str) -> None:
        self.urls, self.stream_key = urls, stream_key
        self.ctx = ssl.create_default_context(cafile=ca_file)
        self.expect_peers = expect_peers
        self.events: list[tuple[float, int, str]] = []  # (time, agent, full|delta|deleted|..)
        self.enrolled: list[tuple[float, float]] = []  # (asked, answered)
        self.resumes: list[tuple[float, float, float, float]] = []  # Sim times, first line
        self.ping_mismatch = 0
        self.errors: Counter[str] = Counter()
        self.sims: list[Sim] = []
        self.digests_ready = False

    async def enrol(self, sim: Sim) -> None:
        backoff = 0.5
        # The proof of the private key that lets a retry (the answer lost) get its peer.
        sim.mac_key = agent_mac_key(sim.private, self.stream_key)
        proof = enroll_proof(sim.mac_key, sim.setup_key)
        while True:
            asked = time.time()
            try:
                got = await post_json(self.urls[sim.home], self.ctx, "/api/v1/enroll", {
                    "setup_key": sim.setup_key, "public_key": sim.public,
                    "hostname": f"s{sim.idx}", "proof": proof,
                    "endpoints": [f"192.0.2.{1 + sim.idx % 250}:{20000 + sim.idx % 40000}"]})
                break
            except (OSError, HttpError, ValueError, asyncio.IncompleteReadError) as e:
                self.errors[f"enrol: {type(e).__name__}"] += 1
                await asyncio.sleep(jittered(backoff))
                backoff = min(2 * backoff, 10.0)
        self.enrolled.append((asked, time.time()))
        sim.token, sim.server_key = got["token"], got["server_key"]["public_key"]
        verify_stream_key(sim.server_key, got["server_key"]["stream_key"],
                          got["server_key"]["stream_key_sig"])
        if got["server_key"]["stream_key"] != self.stream_key:
            raise SystemExit("a replica answered with another stream key than the first")

    async def follow(self, sim: Sim) -> None:
        """Hold the stream, moving to the next replica (after a jittered back-off) when it
        breaks, resuming from the held version as the agent does."""
        backoff, at = 0.5, sim.home
        while not sim.done:
            try:
                await self._stream(sim, at)
                backoff = 0.5
            except HttpError as e:
                self.errors[f"stream: HTTP {e.status}"] += 1
                if e.status == 503:
                    await asyncio.sleep(jittered(float(e.headers.get("retry-after", "1"))))
                    at = (at + 1) % len(self.urls)
                    continue
            except ResyncNeeded:
                self.errors["resync"] += 1
                sim.held = None
                continue
            except (OSError, ValueError, asyncio.IncompleteReadError, BadMessage) as e:
                self.errors[f"stream: {type(e).__name__}"] += 1
            if sim.replica >= 0:
                sim.broke = time.time()
            sim.replica = -1
            if sim.done:
                return
            at = (at + 1) % len(self.urls)
            await asyncio.sleep(jittered(backoff))
            backoff = min(2 * backoff, 10.0)

    async def _stream(self, sim: Sim, at: int) -> None:
        q: dict[str, Any] = {"since": sim.held.version if sim.held else 0, "mac": 1}
        if sim.held is not None:
            q["digest"] = sim.held_digest()
        sim.asked = time.time()
        status, headers, r, w = await _request(
            self.urls[at], self.ctx, "GET", f"/api/v1/agent/netmap?{urlencode(q)}",
            {"Authorization": f"Bearer {sim.token}"})
        sim.answered = time.time()
        try:
            if status != 200:
                raise HttpError(status, headers, await _body(r, headers))
            sim.connects += 1
            sim.replica = at
            first, buf = True, b""
            async for chunk in _chunks(r):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._line(sim, line, first)
                    first = False
                    if sim.done:
                        return
        finally:
            _close(w)

    def _line(self, sim: Sim, line: bytes, first: bool) -> None:
        msg = parse_message(open_line(sim.server_key, sim.public, line, sim.mac_key))
        now = time.time()
        if first and sim.connects > 1:
            self.events.append((now, sim.idx, f"resume-{msg.type}"))
            self.resumes.append((sim.broke, sim.asked, sim.answered, now))
        if isinstance(msg, PingMessage):
            if sim.held is not None and msg.version != sim.held.version:
                self.ping_mismatch += 1
            return
        try:
            new = next_netmap(sim.held, msg)
        except PeerDeleted:
            sim.done = True
            self.events.append((now, sim.idx, "deleted"))
            return
        if new is None:
            return
        sim.held = new
        self.events.append((now, sim.idx, "full" if isinstance(msg, FullMessage) else "delta"))
        if self.expect_peers and len(new.peers) == self.expect_peers:
            self.events.append((now, sim.idx, "complete"))

    async def agent(self, sim: Sim, gate: asyncio.Semaphore) -> None:
        async with gate:
            await self.enrol(sim)
        await self.follow(sim)


def load_main(conf: dict[str, Any], out: Any) -> None:
    """A load process: its agents enrol (at most `concurrency` at a time) and stream; every
    0.2 s it sends the controller what happened since."""
    with contextlib.suppress(ImportError):
        import uvloop
        uvloop.install()
    load = Load(conf["urls"], conf["ca_file"], conf["expect_peers"], conf["stream_key"])
    load.sims = [Sim(i, key, home) for i, key, home in conf["agents"]]

    async def report() -> None:
        sent_events = sent_enrolled = sent_resumes = 0
        while True:
            await asyncio.sleep(0.2)
            # This process plays thousands of agents, each of which would be a process with a
            # small heap: here a full collection walks all of their netmaps at once (1.6 s
            # seen), stalls every one of them and shows up as propagation time that is the
            # harness's. What lived through a tick is kept out of the collector's sight; the
            # cycles that leaks are the harness's and last as long as the run.
            gc.freeze()
            by_replica = Counter(s.replica for s in load.sims if s.replica >= 0)
            out.put({"events": load.events[sent_events:],
                     "enrolled": load.enrolled[sent_enrolled:],
                     "resumes": load.resumes[sent_resumes:],
                     "streams": dict(by_replica), "ping_mismatch": load.ping_mismatch,
                     "digests_ready": load.digests_ready,
                     "errors": dict(load.errors)})
            sent_events, sent_enrolled = len(load.events), len(load.enrolled)
            sent_resumes = len(load.resumes)

    async def digests() -> None:
        # An agent computes its netmap's digest on its own CPU when it reconnects; here one
        # process plays thousands of agents, so they compute theirs once the mesh is
        # settled (the controller says so), not all at once in a replica's reconnect storm.
        while not conf["settled"].is_set():
            await asyncio.sleep(0.5)
        for s in load.sims:
            if s.held is not None:
                s.held_digest()
        load.digests_ready = True

    async def main() -> None:
        gate = asyncio.Semaphore(conf["concurrency"])
        reporter = asyncio.create_task(report())
        ready = asyncio.create_task(digests())
        await asyncio.gather(*(load.agent(s, gate) for s in load.sims))
        reporter.cancel()
        ready.cancel()

    asyncio.run(main())


# --- servers ----------------------------------------------------------------------------------


@dataclass
class Replica:
    url: str
    proc: subprocess.Popen
    log: Path

    def cpu_s(self) -> float:
        return _proc_cpu_s(self.proc.pid)

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_replicas(work: Path, db_url: str, n: int,
                   replicas: list[Replica]) -> tuple[str, Path]:
    """Start `n` servers, each put into `replicas` as soon as it runs (so that an interrupted
    start still stops it). Each leads its own process group: a Ctrl-C at the terminal
    reaches the controller alone, which stops them in order."""
    tls = make_server_cert(work, ["127.0.0.1"])
    token_file = work / "admin.token"
    for i in range(n):
        url = f"https://127.0.0.1:{_free_port()}"
        log = work / f"server{i}.log"
        with log.open("w") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wiremesh", "server", "--db", db_url,
                 "--listen", url.removeprefix("https://"), "--admin-token-file",
                 str(token_file), "--tls-cert", str(tls.cert_file), "--tls-key",
                 str(tls.key_file), "--stun-listen", "off"],
                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        rep = Replica(url, proc, log)
        replicas.append(rep)
        # One at a time: the first migrates and bootstraps the database.
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server {i} exited: {log.read_text()[-1500:]}")
            try:
                httpx.get(f"{url}/healthz", verify=str(tls.ca_file), timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server {i} did not answer") from None
                time.sleep(0.2)
    return token_file.read_text().strip(), tls.ca_file


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


def stop_replicas(replicas: list[Replica]) -> None:
    for r in replicas:
        _signal_group(r.proc, signal.SIGTERM)
    for r in replicas:
        try:
            r.proc.wait(15)
        except subprocess.TimeoutExpired:
            _signal_group(r.proc, signal.SIGKILL)
            r.proc.wait()


async def _reset_postgres(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()


# --- the controller ---------------------------------------------------------------------------


class Feed:
    """What the load processes report, merged."""

    def __init__(self, q: Any, workers: int, settled: Any) -> None:
        self.q = q
        self.settled = settled  # set when no more changes come: agents may cache digests
        self.digests_ready: dict[int, bool] = {}
        self.events: list[tuple[float, int, str]] = []
        self.enrolled: list[tuple[float, float]] = []
        self.resumes: list[tuple[float, float, float, float]] = []
        self.streams: dict[int, dict[int, int]] = {}
        self.ping_mismatch: dict[int, int] = {}
        self.errors: dict[int, dict[str, int]] = {}
        self.workers = workers

    def drain(self, wait: float = 0.1) -> None:
        deadline = time.monotonic() + wait
        while True:
            try:
                w, msg = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            self.events += msg["events"]
            self.enrolled += msg["enrolled"]
            self.resumes += msg["resumes"]
            self.streams[w] = {int(k): v for k, v in msg["streams"].items()}
            self.ping_mismatch[w] = msg["ping_mismatch"]
            self.digests_ready[w] = msg["digests_ready"]
            self.errors[w] = msg["errors"]

    def open_streams(self, replica: int | None = None) -> int:
        return sum(v for s in self.streams.values() for k, v in s.items()
                   if replica is None or k == replica)

    def error_summary(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for e in self.errors.values():
            total.update(e)
        return dict(total)

    def wait(self, pred: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what} "
                                   f"(errors: {self.error_summary()})")
            self.drain(0.2)


def _queue_worker(w: int, conf: dict[str, Any], q: Any) -> None:
    # The controller stops its load processes (SIGTERM), also when it is interrupted itself:
    # a Ctrl-C reaching them too would print a traceback each.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    class Tagged:
        def put(self, msg: dict[str, Any]) -> None:
            q.put((w, msg))

    load_main(conf, Tagged())


def start_load(urls: list[str], ca_file: Path, stream_key: str,
               agents: list[tuple[int, str, int]], workers: int, concurrency: int,
               expect_peers: int, procs: list[Any]) -> Feed:
    """Start the load processes, each put into `procs` as soon as it runs."""
    ctx = mp.get_context("fork")
    q, settled = ctx.Queue(), ctx.Event()
    for w in range(workers):
        conf = {"urls": urls, "ca_file": str(ca_file), "agents": agents[w::workers],
                "settled": settled, "stream_key": stream_key,
                "concurrency": max(1, concurrency // workers), "expect_peers": expect_peers}
        p = ctx.Process(target=_queue_worker, args=(w, conf, q), daemon=True)
        p.start()
        procs.append(p)
    return Feed(q, workers, settled)


def stop_load(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()


def _admin(url: str, ca_file: Path, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, verify=str(ca_file), timeout=120,
                        headers={"Authorization": f"Bearer {token}"})


def policy_file(org: Org, policies: tuple[Policy, ...]) -> str:
    """The policies and routes as a policy file (groups are left as they are)."""
    return export(MeshState(policies=policies, routes=org.routes))


def setup_policy(admin: httpx.Client, org: Org) -> dict[tuple[str, ...], str]:
    """The groups, one setup key per set of groups peers are in (its auto-groups), then
    the policies."""
    for g in sorted(org.members()):
        admin.post("/api/v1/groups", json={"name": g, "members": []}).raise_for_status()
    keys = {}
    for j, groups in enumerate(sorted(set(org.groups_of))):
        keys[groups] = admin.post("/api/v1/setup-keys", json={
            "name": f"k{j}", "reusable": True, "auto_groups": list(groups)}).json()["key"]
    admin.post("/api/v1/policy/apply",
               json={"text": policy_file(org, org.policies)}).raise_for_status()
    return keys


def edited(policies: tuple[Policy, ...], k: int) -> tuple[Policy, ...]:
    """`policies` with the k-th team -> service policy opening one more port (a typical
    edit), cycling through them."""
    own = [i for i, p in enumerate(policies)
           if p.protocol == "tcp" and p.sources[0].startswith("team") and p.destinations]
    at = own[k % len(own)]
    p = policies[at]
    port = PortRange(10000 + k % 50000, 10000 + k % 50000)
    return (*policies[:at], replace(p, ports=(*p.ports, port)), *policies[at + 1:])


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


@dataclass
class Figures:
    enroll_per_s: float = 0.0
    enroll_tail_per_s: float = 0.0
    enroll_s: float = 0.0
    enroll_latency_ms: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # during the enrolment phase
    change_ms: dict[str, list[float]] = field(default_factory=dict)
    change_missed: int = 0
    server_rss_mb: float = 0.0
    idle_cpu_pct: float = 0.0
    rss_per_replica: list[float] = field(default_factory=list)
    replica_kill_resume_s: float | None = None
    killed_streams: int = 0
    full_maps_after_kill: int | None = None
    resumed_with: dict[str, int] = field(default_factory=dict)
    storm_cpu_s: dict[str, float] = field(default_factory=dict)  # survivors, load, wall
    storm_load: float = 0.0
    storm_errors: dict[str, int] = field(default_factory=dict)
    storm_timeline_s: dict[str, float] = field(default_factory=dict)
    storm_phases_s: dict[str, float] = field(default_factory=dict)  # medians
    ping_mismatch: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    all_to_all_converge_s: float | None = None
    all_to_all_enroll_per_s: float | None = None


def enrol_all(feed: Feed, n: int, fig: Figures, timeout: float) -> None:
    feed.wait(lambda: len(feed.enrolled) >= n, timeout, f"{n} enrolments")
    asked = min(a for a, _ in feed.enrolled)
    answered = sorted(b for _, b in feed.enrolled)
    fig.enroll_s = answered[-1] - asked
    fig.enroll_per_s = n / fig.enroll_s
    fig.enroll_latency_ms = [(b - a) * 1e3 for a, b in feed.enrolled]
    tail = answered[int(0.9 * n):]
    if len(tail) > 1 and tail[-1] > tail[0]:
        fig.enroll_tail_per_s = (len(tail) - 1) / (tail[-1] - tail[0])


def _committed_at(admin: httpx.Client, action: str) -> float:
    """When the last change was committed: its audit entry, written in the change's own
    transaction (the clock is this machine's, shared with the load processes)."""
    entry = admin.get("/api/v1/audit", params={"limit": 1}).json()[0]
    if entry["action"] != action:
        raise RuntimeError(f"expected the audit entry of {action}, found {entry['action']}")
    return datetime.fromisoformat(entry["at"]).timestamp()


def run_changes(admin: httpx.Client, feed: Feed, org: Org, n: int, changes: int,
                fig: Figures) -> None:
    """One change at a time; each is timed from its commit to the last stream that received
    an update for it (the change has reached every stream once none came for QUIET_S)."""
    rnd = random.Random(5)
    policies = org.policies
    services = sorted(g for g in org.members() if g.startswith("svc"))
    alive = list(range(n))
    rnd.shuffle(alive)
    kinds = ("group member added", "policy edited", "peer deleted")
    for k in range(changes):
        kind = kinds[k % 3]
        feed.drain(0)
        seen = len(feed.events)
        if kind == "group member added":
            i = alive[k % len(alive)]
            g = rnd.choice([s for s in services if s not in org.groups_of[i]])
            admin.post(f"/api/v1/groups/{g}/members", json={"peer": f"s{i}"}).raise_for_status()
            t0 = _committed_at(admin, "group.add")
        elif kind == "policy edited":
            policies = edited(policies, k)
            admin.post("/api/v1/policy/apply",
                       json={"text": policy_file(org, policies)}).raise_for_status()
            t0 = _committed_at(admin, "policy.apply")
        else:
            i = alive.pop()
            admin.delete(f"/api/v1/peers/s{i}").raise_for_status()
            t0 = _committed_at(admin, "peer.delete")
        last = None
        deadline = time.monotonic() + CHANGE_TIMEOUT_S
        while time.monotonic() < deadline:
            feed.drain(0.1)
            new = [e for e in feed.events[seen:] if e[2] in ("delta", "full", "deleted")]
            if new:
                last = max(e[0] for e in new)
                if time.time() - last > QUIET_S:
                    break
        if last is None:
            fig.change_missed += 1
            continue
        fig.change_ms.setdefault(kind, []).append(max(0.0, last - t0) * 1e3)


def measure_idle(feed: Feed, replicas: list[Replica], fig: Figures) -> None:
    alive = [r for r in replicas if r.proc.poll() is None]
    cpu0, t0 = [r.cpu_s() for r in alive], time.monotonic()
    feed.wait(lambda: time.monotonic() - t0 > KEEPALIVE_ROUND_S, KEEPALIVE_ROUND_S + 5,
              "the idle window")
    dt = time.monotonic() - t0
    fig.idle_cpu_pct = max((r.cpu_s() - c) / dt * 100 for r, c in zip(alive, cpu0,
                                                                      strict=True))
    fig.rss_per_replica = [r.rss_mb() for r in alive]
    fig.server_rss_mb = max(fig.rss_per_replica)


def kill_one(feed: Feed, replicas: list[Replica], procs: list[Any], fig: Figures) -> None:
    feed.wait(lambda: sum(feed.digests_ready.values()) == feed.workers, 300,
              "the agents' netmap digests")
    victim = replicas[0]
    fig.killed_streams = feed.open_streams(0)
    seen, seen_resumes = len(feed.events), len(feed.resumes)
    errors0 = Counter(feed.error_summary())
    t_kill = time.time()
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    cpu0 = _cpu(replicas[1:], procs)

    def resumed() -> list[tuple[float, int, str]]:
        return [e for e in feed.events[seen:] if e[2].startswith("resume-")]

    try:
        feed.wait(lambda: len({e[1] for e in resumed()}) >= fig.killed_streams
                  and feed.open_streams(0) == 0, 120, "the killed replica's agents to resume")
    finally:
        fig.storm_cpu_s = {k: v - cpu0[k] for k, v in _cpu(replicas[1:], procs).items()}
        fig.storm_load = os.getloadavg()[0]
        fig.storm_errors = dict(Counter(feed.error_summary()) - errors0)
        phases = feed.resumes[seen_resumes:]
        if phases:
            fig.storm_phases_s = {
                what: statistics.median(f(*ph) for ph in phases) for what, f in (
                    ("kill -> stream broke", lambda b, a, h, f: b - t_kill),
                    ("broke -> asked again", lambda b, a, h, f: a - b),
                    ("asked -> answered", lambda b, a, h, f: h - a),
                    ("answered -> first line", lambda b, a, h, f: f - h))}
        got = resumed()
        first = sorted({e[1]: e[0] for e in reversed(got)}.values())
        fig.storm_timeline_s = {f"{q:.0%}": first[int(q * (len(first) - 1))] - t_kill
                                for q in (0.1, 0.5, 0.9, 1.0) if first}
        if got and len({e[1] for e in got}) >= fig.killed_streams:
            fig.replica_kill_resume_s = max(e[0] for e in got) - t_kill
        fig.resumed_with = dict(Counter(e[2].removeprefix("resume-") for e in got))
        fig.full_maps_after_kill = sum(1 for e in feed.events[seen:] if e[2] == "full")


def run_mesh(args: argparse.Namespace, work: Path, db_url: str, n: int, replicas_n: int,
             org: Org | None, fig: Figures) -> None:
    replicas: list[Replica] = []
    procs: list[Any] = []
    try:
        token, ca_file = start_replicas(work, db_url, replicas_n, replicas)
        admin = _admin(replicas[-1].url, ca_file, token)
        if org is not None:
            keys = setup_policy(admin, org)
            agents = [(i, keys[org.groups_of[i]], i % replicas_n) for i in range(n)]
        else:
            key = admin.post("/api/v1/setup-keys", json={"name": "all", "reusable": True}
                             ).json()["key"]
            agents = [(i, key, i % replicas_n) for i in range(n)]
        console.print(f"{replicas_n} server(s) up; {n} simulated agents enrol "
                      f"({args.workers} load processes) ...")
        stream_key = admin.get("/api/v1/server-key").json()["stream_key"]
        feed = start_load([r.url for r in replicas], ca_file, stream_key, agents, args.workers,
                          args.concurrency, 0 if org is not None else n - 1, procs)
        cpu0 = _cpu(replicas, procs)
        enrol_all(feed, n, fig, timeout=max(600, n / 2))
        fig.cpu_s = {k: v - cpu0[k] for k, v in _cpu(replicas, procs).items()}
        if org is None:
            feed.wait(lambda: len({e[1] for e in feed.events if e[2] == "complete"}) >= n,
                      600, "every netmap to hold every peer")
            last_enrolled = max(b for _, b in feed.enrolled)
            done = max(e[0] for e in feed.events if e[2] == "complete")
            fig.all_to_all_converge_s = done - last_enrolled
            return
        feed.wait(lambda: feed.open_streams() >= n and len(
            {e[1] for e in feed.events if e[2] == "full"}) >= n, 600,
            "every agent to hold its full netmap")
        console.print(f"enrolled at {fig.enroll_per_s:.0f}/s; {args.changes} changes ...")
        run_changes(admin, feed, org, n, args.changes, fig)
        console.print("idle window ...")
        feed.settled.set()
        measure_idle(feed, replicas, fig)
        if replicas_n > 1:
            console.print("killing replica 0 ...")
            kill_one(feed, replicas, procs, fig)
        feed.drain(0.5)
        fig.ping_mismatch = sum(feed.ping_mismatch.values())
        fig.errors = feed.error_summary()
    finally:
        stop_load(procs)
        stop_replicas(replicas)


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu(replicas: list[Replica], procs: list[Any]) -> dict[str, float]:
    """CPU seconds so far: the servers, the load processes, and the wall clock."""
    return {"servers": sum(r.cpu_s() for r in replicas),
            "load processes": sum(_proc_cpu_s(p.pid) for p in procs),
            "wall": time.monotonic()}


def _check_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need <= hard or (hard == resource.RLIM_INFINITY and soft < need):
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    elif soft < need:
        raise SystemExit(f"open files limit is {soft} (hard {hard}); this run needs about "
                         f"{need}: raise it (ulimit -n)")


def enroll_cpu_ms(fig: Figures, n: int) -> float:
    """Server CPU per enrolment over the enrolment phase: everything an enrolment costs
    (two TLS handshakes, as an agent's enrolment and stream are two connections, the
    request, the store, and the netmap pushes it causes to the streams already open).
    Unlike enrolments per second it holds on a busy machine."""
    return fig.cpu_s.get("servers", 0.0) / n * 1e3


def table(args: argparse.Namespace, fig: Figures) -> Table:
    t = Table(title=f"control plane at scale ({args.agents} agents, {args.db}, "
                    f"{args.replicas} replica(s), organisation policy of wiremesh.lab.org)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("enrolments per second (streams open)", f"{fig.enroll_per_s:.0f}")
    t.add_row("  last 10% of enrolments, per second", f"{fig.enroll_tail_per_s:.0f}")
    t.add_row("  one enrolment's latency", f"p50 {statistics.median(fig.enroll_latency_ms):.0f} "
              f"ms, p99 {_pct(fig.enroll_latency_ms, 0.99):.0f} ms")
    t.add_row("  CPU used meanwhile", ", ".join(f"{k} {v:.0f} s" for k, v in fig.cpu_s.items()))
    t.add_row("  server CPU per enrolment (request, store, pushes to open streams)",
              f"{enroll_cpu_ms(fig, args.agents):.1f} ms")
    for kind, xs in fig.change_ms.items():
        t.add_row(f"change propagation, {kind} (n={len(xs)})",
                  f"p50 {statistics.median(xs):.0f} ms, p99 {_pct(xs, 0.99):.0f} ms")
    if fig.change_missed:
        t.add_row("changes no stream received", str(fig.change_missed))
    t.add_row("server RSS (per replica)", ", ".join(f"{x:.0f} MB" for x in fig.rss_per_replica))
    t.add_row("server CPU idle, all streams open", f"{fig.idle_cpu_pct:.1f} %")
    if args.replicas > 1:
        t.add_row("streams on the killed replica", str(fig.killed_streams))
        t.add_row("all of them resumed elsewhere after",
                  f"{fig.replica_kill_resume_s:.1f} s" if fig.replica_kill_resume_s else "never")
        t.add_row("first message after resume", ", ".join(
            f"{k}: {v}" for k, v in sorted(fig.resumed_with.items())))
        t.add_row("full maps after the kill", str(fig.full_maps_after_kill))
        t.add_row("  share of them resumed after", ", ".join(
            f"{k} {v:.1f} s" for k, v in fig.storm_timeline_s.items()))
        t.add_row("  one resume (medians)", ", ".join(
            f"{k} {v:.2f} s" for k, v in fig.storm_phases_s.items()))
        resumes = max(1, sum(fig.resumed_with.values()))
        t.add_row("  CPU meanwhile (load average)", ", ".join(
            f"{k} {v:.1f} s" for k, v in fig.storm_cpu_s.items())
            + f" ({fig.storm_load:.1f})")
        t.add_row("  survivor CPU per resume",
                  f"{fig.storm_cpu_s.get('servers', 0.0) / resumes * 1e3:.1f} ms")
        t.add_row("  client-side retries meanwhile", ", ".join(
            f"{k}: {v}" for k, v in fig.storm_errors.items()) or "none")
    t.add_row("keepalives naming another version than held", str(fig.ping_mismatch))
    t.add_row("client-side retries", ", ".join(f"{k}: {v}" for k, v in fig.errors.items())
              or "none")
    if fig.all_to_all_converge_s is not None:
        t.add_row(f"all-to-all, {args.all_to_all} agents: enrolments per second",
                  f"{fig.all_to_all_enroll_per_s:.0f}")
        t.add_row(f"all-to-all, {args.all_to_all} agents: last enrolment -> converged",
                  f"{fig.all_to_all_converge_s:.2f} s")
    return t


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="How long: enrolment takes agents / enroll_per_s (1,000 agents at 25/s: 40 s), "
               "then every agent's full map, --changes changes at 1-3 s each, a 16 s idle "
               "window, and, unless --all-to-all 0, the same again for the 2,000-agent "
               "all-to-all case (minutes). On a quiet 2-core machine 10,000 agents with "
               "--all-to-all 0 --changes 50 took 9 min on SQLite, 12 with --db postgresql "
               "--replicas 2; "
               "the machine's load slows it a lot (at load 20, 5,000 agents did not finish "
               "enrolling in 42 min). With --replicas 2 "
               "a replica is killed after the idle window (seconds to resume); 2,000 "
               "and 3,000 agents on PostgreSQL with --all-to-all 0 --changes 3 took 5 and "
               "12 min at load average 9-10. 10,000 agents need ~11,000 open files per "
               "process (ulimit -n).")
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--pg-url", default=os.environ.get("WIREMESH_TEST_PG_URL"),
                    help="PostgreSQL database to use (its schema is dropped first)")
    ap.add_argument("--workers", type=int, default=4, help="load processes")
    ap.add_argument("--concurrency", type=int, default=64, help="enrolments in flight")
    ap.add_argument("--changes", type=int, default=60, help="single changes to time")
    ap.add_argument("--all-to-all", type=int, default=2000,
                    help="agents in the all-to-all worst case (0: skip it)")
    args = ap.parse_args()
    if args.db == "postgresql" and not args.pg_url:
        ap.error("--db postgresql needs --pg-url or WIREMESH_TEST_PG_URL")
    if args.replicas < 1 or args.agents < 30:
        ap.error("--replicas >= 1 and --agents >= 30")
    # The limit is per process: a server (the survivor of a replica kill) holds a socket
    # per agent, a load process its share of them.
    _check_fd_limit(max(args.agents, args.all_to_all) + 1000)
    fig = Figures()
    unwind_on_sigterm()  # a controller stopped with SIGTERM stops its servers and load too
    with tempfile.TemporaryDirectory(prefix="wm-scale-") as tmp:
        work = Path(tmp)

        def db_url(name: str) -> str:
            if args.db == "sqlite":
                return f"sqlite:///{work}/{name}.db"
            asyncio.run(_reset_postgres(args.pg_url))
            return str(args.pg_url)

        try:
            (work / "mesh").mkdir()
            run_mesh(args, work / "mesh", db_url("mesh"), args.agents, args.replicas,
                     org_mesh(args.agents), fig)
            if args.all_to_all:
                (work / "a2a").mkdir()
                console.print(f"all-to-all worst case, {args.all_to_all} agents ...")
                a2a = Figures()
                run_mesh(args, work / "a2a", db_url("a2a"), args.all_to_all, 1, None, a2a)
                fig.all_to_all_converge_s = a2a.all_to_all_converge_s
                fig.all_to_all_enroll_per_s = a2a.enroll_per_s
        except Exception:
            for log in sorted(work.glob("*/server*.log")):
                console.print(f"--- {log} ---\n{log.read_text()[-1500:]}", highlight=False)
            raise
        except KeyboardInterrupt:
            console.print("interrupted; its servers and load processes are stopped")
            return 130
    Console().print(table(args, fig))
    all_ms = [x for xs in fig.change_ms.values() for x in xs]
    print(json.dumps({
        "agents": args.agents, "db": args.db, "replicas": args.replicas,
        "enroll_per_s": round(fig.enroll_per_s, 1),
        "enroll_server_cpu_ms": round(enroll_cpu_ms(fig, args.agents), 2),
        "change_ms_p50": round(statistics.median(all_ms), 1) if all_ms else None,
        "change_ms_p99": round(_pct(all_ms, 0.99), 1) if all_ms else None,
        "server_rss_mb": round(fig.server_rss_mb, 1),
        "idle_cpu_pct": round(fig.idle_cpu_pct, 2),
        "replica_kill_resume_s": (round(fig.replica_kill_resume_s, 2)
                                  if fig.replica_kill_resume_s is not None else None),
        "full_maps_after_kill": fig.full_maps_after_kill,
        "all_to_all_2000_converge_s": (round(fig.all_to_all_converge_s, 2)
                                       if fig.all_to_all_converge_s is not None else None),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
