"""netem's `delay D J loss random L%` in userspace, for lab kernels without the netem qdisc.

Every host's egress onto a lab switch goes to an NFQUEUE (`iptables -j NFQUEUE`: this kernel
has the xtables NFQUEUE target but not nftables' `queue` statement, CONFIG_NFT_QUEUE unset).
One process, living in the switch's own namespace, reads the queues of all those hosts (a
netlink socket belongs to the namespace it was opened in: it enters each host's namespace only
to open that host's socket), drops L % of the packets and lets each of the others go after a
uniform random delay in [D - J, D + J], so packets overtake each other as with netem's jitter.
As with a netem qdisc on each host's link, every packet between two hosts is impaired once,
on its sender's way out. Living outside the hosts, the impairment outlasts what a scenario
does to a host (the failover lab kills every process in a router's namespace).

`python -m wiremesh.lab.netem_queue --queue N [--delay-ms D --jitter-ms J --loss-pct L] NS...`
serves until SIGTERM, then prints one JSON line of counts. `impaired_links(...)` runs it for a
lab and installs and removes the rules around it.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wiremesh.lab.mesh import stop, wait_until
from wiremesh.lab.netns import Host, Lab, LabError, Switch

QUEUE = 7
QUEUE_STATE = "/proc/net/netfilter/nfnetlink_queue"
# Packets held in the kernel per queue, waiting for their verdict (netem's default limit is
# 1000 packets; the kernel's queue default is 1024).
QUEUE_MAXLEN = 4096
# A release this much later than its due time is counted as late (the process was not
# scheduled in time: the impairment was harsher than asked).
LATE_S = 0.01


@dataclass(frozen=True)
class Impairment:
    delay_ms: float = 50.0
    jitter_ms: float = 50.0
    loss_pct: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.jitter_ms <= self.delay_ms:
            raise ValueError(f"jitter_ms: must be between 0 and delay_ms ({self.delay_ms}), "
                             f"got {self.jitter_ms}")
        if not 0 <= self.loss_pct <= 100:
            raise ValueError(f"loss_pct: must be between 0 and 100, got {self.loss_pct}")

    def describe(self) -> str:
        return (f"delay {self.delay_ms:g}ms {self.jitter_ms:g}ms (uniform), "
                f"loss random {self.loss_pct:g}%")

    def hold_s(self, rng: random.Random) -> float:
        return rng.uniform(self.delay_ms - self.jitter_ms, self.delay_ms + self.jitter_ms) / 1e3


def rule_commands(link: str, action: str, queue: int = QUEUE) -> list[list[str]]:
    """iptables argv adding (`-A`) or deleting (`-D`) the rule that queues `link`'s egress,
    IPv4 and IPv6."""
    if action not in ("-A", "-D"):
        raise ValueError(f"action: must be -A or -D, got {action!r}")
    return [[tool, "-w", "-t", "mangle", action, "POSTROUTING", "-o", link,
             "-j", "NFQUEUE", "--queue-num", str(queue)] for tool in ("iptables", "ip6tables")]


def bound_queues(proc_text: str) -> set[int]:
    """Queue numbers some process is bound to, from /proc/net/netfilter/nfnetlink_queue."""
    return {int(line.split()[0]) for line in proc_text.splitlines() if line.strip()}


# --- the process ---------------------------------------------------------------------------


@dataclass
class _Holder:
    """Packets waiting for their verdict, earliest due first."""

    impairment: Impairment
    rng: random.Random
    heap: list[tuple[float, int, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    seq: Iterator[int] = field(default_factory=itertools.count)
    counts: dict[str, float] = field(default_factory=lambda: {
        "packets": 0, "dropped": 0, "late": 0, "late_ms_max": 0.0, "overflows": 0,
        "verdict_errors": 0})

    def take(self, packet: Any) -> None:
        with self.cond:
            self.counts["packets"] += 1
            if self.rng.random() * 100 < self.impairment.loss_pct:
                self.counts["dropped"] += 1
                packet.drop()
                return
            due = time.monotonic() + self.impairment.hold_s(self.rng)
            heapq.heappush(self.heap, (due, next(self.seq), packet))
            self.cond.notify()

    def release_forever(self) -> None:
        with self.cond:
            while True:
                if not self.heap:
                    self.cond.wait()
                    continue
                late = time.monotonic() - self.heap[0][0]
                if late < 0:
                    self.cond.wait(-late)
                    continue
                _, _, packet = heapq.heappop(self.heap)
                packet.accept()
                if late > LATE_S:
                    self.counts["late"] += 1
                self.counts["late_ms_max"] = max(self.counts["late_ms_max"], late * 1e3)


def _read_queue(conn: Any, holder: _Holder, overflow: type[Exception]) -> None:
    try:
        while True:
            try:
                for packet in conn:
                    holder.take(packet)
                return  # connection closed
            except overflow:
                # The socket buffer overflowed: the kernel dropped packets, as a full netem
                # queue would. Count it and go on.
                with holder.cond:
                    holder.counts["overflows"] += 1
                conn.reset()
            except OSError:
                raise  # the socket itself failed: nothing more will come
            except Exception:
                # fnfqueue hands the kernel's refusal of a verdict over as the next "packet"
                # (a bare Exception): a packet the kernel already let go, e.g. when a host's
                # interface went away with a packet held (a router killed in the failover
                # lab). That packet is gone either way; the queue goes on.
                with holder.cond:
                    holder.counts["verdict_errors"] += 1
    except BaseException:
        # A host whose queue nobody reads is cut off: end the process so it shows.
        traceback.print_exc()
        os.kill(os.getpid(), signal.SIGTERM)
        raise


def serve(namespaces: Sequence[str], impairment: Impairment, queue: int,
          seed: int | None = None) -> dict[str, float]:
    """Impair the packets queued to `queue` in each namespace until SIGTERM or SIGINT; returns
    the counts."""
    import fnfqueue
    from pyroute2 import netns

    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # threads started below inherit it
    holder = _Holder(impairment, random.Random(seed))
    conns = []
    for ns in namespaces:
        netns.pushns()
        try:
            netns.setns(ns, flags=0)
            conn = fnfqueue.Connection()
        finally:
            netns.popns()
        q = conn.bind(queue)
        q.set_mode(0, fnfqueue.COPY_META)  # the verdict needs no payload
        q.set_maxlen(QUEUE_MAXLEN)
        conns.append(conn)
    for conn in conns:
        threading.Thread(target=_read_queue, args=(conn, holder, fnfqueue.BufferOverflowException),
                         daemon=True).start()
    threading.Thread(target=holder.release_forever, daemon=True).start()
    signal.sigwait(stops)
    for conn in conns:
        conn.close()
    with holder.cond:
        return dict(holder.counts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wiremesh.lab.netem_queue")
    p.add_argument("--queue", type=int, default=QUEUE)
    p.add_argument("--delay-ms", type=float, default=Impairment.delay_ms)
    p.add_argument("--jitter-ms", type=float, default=Impairment.jitter_ms)
    p.add_argument("--loss-pct", type=float, default=Impairment.loss_pct)
    p.add_argument("namespaces", nargs="+")
    args = p.parse_args(argv)
    try:
        impairment = Impairment(args.delay_ms, args.jitter_ms, args.loss_pct)
    except ValueError as e:
        p.error(str(e))
    counts = serve(args.namespaces, impairment, args.queue)
    sys.stdout.write(json.dumps(counts) + "\n")
    return 0


# --- in a lab --------------------------------------------------------------------------------


@dataclass
class ImpairedLinks:
    impairment: Impairment
    log: Path
    proc: Any
    counts: dict[str, float] = field(default_factory=dict)  # filled once stopped

    def alive(self) -> bool:
        return bool(self.proc.poll() is None)


@contextlib.contextmanager
def impaired_links(lab: Lab, switch: Switch, hosts: Sequence[Host],
                   impairment: Impairment = Impairment(),
                   queue: int = QUEUE) -> Iterator[ImpairedLinks]:
    """Impair every packet `hosts` send onto `switch` while inside the block; the counts are in
    the yielded object's `counts` after it."""
    log = lab.log_dir / "netem-queue.log"
    proc = Host(lab, "netem", switch.ns).popen(
        [sys.executable, "-m", "wiremesh.lab.netem_queue", "--queue", str(queue),
         "--delay-ms", str(impairment.delay_ms), "--jitter-ms", str(impairment.jitter_ms),
         "--loss-pct", str(impairment.loss_pct), *(h.ns for h in hosts)], log=log)
    handle = ImpairedLinks(impairment, log, proc)
    links = [(h, lab.link_of(h, switch)) for h in hosts]
    added: list[tuple[Host, str]] = []
    try:
        def bound() -> bool:
            if not handle.alive():
                raise LabError(f"the netem queue process exited: {log.read_text().strip()}")
            return all(queue in bound_queues(h.run(["cat", QUEUE_STATE]).stdout)
                       for h, _ in links)

        wait_until(bound, 15, f"the netem queue process to bind queue {queue} in every host")
        for h, link in links:
            added.append((h, link))
            for add in rule_commands(link, "-A", queue):
                h.run(add)
        yield handle
    finally:
        # Rules first: a packet queued with nobody bound is dropped.
        for h, link in added:
            for delete in rule_commands(link, "-D", queue):
                h.run(delete, check=False)
        stop(proc)
        with contextlib.suppress(OSError, ValueError, IndexError):
            handle.counts = json.loads(log.read_text().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
