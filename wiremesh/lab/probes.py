"""Real traffic probes from one host, all at once: `python -m wiremesh.lab.probes < spec.json`.

The spec is a JSON object `{"timeout": s, "probes": [{"dst": ip, "proto": "tcp"|"udp"|"icmp",
"port": n|null, "expect": bool|null}], "until": s|null}`:

- without `until`, every probe runs once (concurrently) and the answer is one result each;
- with `until`, every probe is started again every 50 ms until its outcomes have matched
  `expect` twice in a row or `until` seconds have passed; `converged_at` is the
  `time.monotonic()` at which the first probe of that matching run started (CLOCK_MONOTONIC
  is machine-wide, so the caller can compare it with its own clock), None when it never
  settled.

A probe is `reached` when the packet got through the destination's firewall: a TCP handshake
completed (or was refused: no listener, but the SYN was let in), a UDP datagram was echoed,
a ping was answered. Anything else (timeout, no route, no WireGuard peer) is blocked.
The first line on stdout is `{"started": monotonic}` once the spec is read and probing
begins; the last line is the answer: a JSON list of results in spec order.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

SETTLE_MATCHES = 2  # consecutive matching outcomes before a polled probe counts as converged
POLL_INTERVAL_S = 0.05  # polled probes start this often: the resolution of `converged_at`


@dataclass(frozen=True)
class Probe:
    dst: str
    proto: str
    port: int | None = None
    expect: bool | None = None


@dataclass
class Result:
    dst: str
    proto: str
    port: int | None
    reached: bool
    detail: str
    ms: float
    converged_at: float | None = None


async def _tcp(dst: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(dst, port), timeout)
    except TimeoutError:
        return False, "timeout"
    except ConnectionRefusedError:
        return True, "refused"
    except OSError as e:
        return False, os.strerror(e.errno) if e.errno else str(e)
    writer.close()
    return True, "open"


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data == self.payload and not self.answer.done():
            self.answer.set_result("echo")

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable: the datagram got in, nobody listens.
        if isinstance(exc, ConnectionRefusedError) and not self.answer.done():
            self.answer.set_result("refused")


async def _udp(dst: str, port: int, timeout: float) -> tuple[bool, str]:
    loop = asyncio.get_running_loop()
    payload = os.urandom(8)
    try:
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _UdpClient(payload), remote_addr=(dst, port))
    except OSError as e:
        return False, os.strerror(e.errno) if e.errno else str(e)
    try:
        transport.sendto(payload)
        return True, await asyncio.wait_for(proto.answer, timeout)
    except TimeoutError:
        return False, "timeout"
    except OSError as e:
        return False, os.strerror(e.errno) if e.errno else str(e)
    finally:
        transport.close()


async def _icmp(dst: str, timeout: float) -> tuple[bool, str]:
    proc = await asyncio.create_subprocess_exec(
        "ping", "-n", "-q", "-c", "1", "-W", f"{timeout:.3f}", dst,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    rc = await proc.wait()
    return rc == 0, "reply" if rc == 0 else "timeout"


async def probe_once(p: Probe, timeout: float) -> Result:
    t0 = time.monotonic()
    if p.proto == "tcp":
        reached, detail = await _tcp(p.dst, p.port or 0, timeout)
    elif p.proto == "udp":
        reached, detail = await _udp(p.dst, p.port or 0, timeout)
    else:
        reached, detail = await _icmp(p.dst, timeout)
    return Result(p.dst, p.proto, p.port, reached, detail, round((time.monotonic() - t0) * 1e3, 1))


async def probe_until(p: Probe, timeout: float, deadline: float) -> Result:
    """Start `p` every POLL_INTERVAL_S (overlapping: a dropped probe must not hide a change for
    a whole timeout) until, in start order, SETTLE_MATCHES finished probes in a row matched
    `p.expect`, or the deadline. Returns the last finished probe's result."""
    started: list[tuple[float, asyncio.Task[Result]]] = []
    last: Result | None = None
    try:
        while True:
            if time.monotonic() <= deadline:
                started.append((time.monotonic(), asyncio.create_task(probe_once(p, timeout))))
            run_start, matches = None, 0
            for t0, task in started:
                if not task.done():
                    break
                last = task.result()
                if last.reached == p.expect:
                    matches += 1
                    run_start = t0 if matches == 1 else run_start
                else:
                    run_start, matches = None, 0
            if matches >= SETTLE_MATCHES:
                last.converged_at = run_start  # type: ignore[union-attr]
                return last  # type: ignore[return-value]
            if time.monotonic() > deadline and all(task.done() for _, task in started):
                return last  # type: ignore[return-value]
            await asyncio.sleep(POLL_INTERVAL_S)
    finally:
        for _, task in started:
            task.cancel()


async def run(spec: dict[str, Any]) -> list[Result]:
    timeout = float(spec.get("timeout", 1.0))
    probes = [Probe(**p) for p in spec["probes"]]
    if spec.get("until") is None:
        return list(await asyncio.gather(*(probe_once(p, timeout) for p in probes)))
    deadline = time.monotonic() + float(spec["until"])
    return list(await asyncio.gather(*(probe_until(p, timeout, deadline) for p in probes)))


def main() -> None:
    try:
        spec = json.load(sys.stdin)
    except json.JSONDecodeError as e:
        sys.exit(f"probes: bad spec on stdin: {e}")
    sys.stdout.write(json.dumps({"started": time.monotonic()}) + "\n")
    sys.stdout.flush()
    results = asyncio.run(run(spec))
    sys.stdout.write(json.dumps([asdict(r) for r in results]) + "\n")


if __name__ == "__main__":
    main()
