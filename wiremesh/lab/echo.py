"""UDP echo for lab scenarios: `python -m wiremesh.lab.echo serve|send ...`.

- `serve --port P`: answers every datagram with its payload plus `|` and the source address it
  saw. Behind masquerading routers that address is the router that carried the packet, so each
  answer names the path it took.
- `send --to IP:PORT --out FILE [--interval S]`: sends `<seq> <sent_at>` every S seconds; each
  answer becomes one JSON line `{"seq", "sent", "recv", "via"}` in FILE. Times are
  CLOCK_MONOTONIC, which every network namespace shares, so a scenario can set them against its
  own `time.monotonic()`. On SIGTERM it prints one JSON line with the counts and exits.

`read_replies(path, offset)` follows FILE incrementally.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass(frozen=True)
class Reply:
    seq: int
    sent: float
    recv: float
    via: str


def read_replies(path: Path, offset: int = 0) -> tuple[list[Reply], int]:
    """Complete lines of FILE from `offset`; returns them and the offset to continue from."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line still being written is read next time
    out = []
    for line in data[:end].splitlines():
        d = json.loads(line)
        out.append(Reply(d["seq"], d["sent"], d["recv"], d["via"]))
    return out, offset + end


def serve(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(data + b"|" + addr[0].encode(), addr)


class _Stop(Exception):
    pass


def _raise_stop(*_: object) -> None:
    raise _Stop


def send(dst: tuple[str, int], out: Path, interval: float) -> dict[str, int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    counts = {"sent": 0, "send_errors": 0, "replies": 0}
    seq, next_send = 0, time.monotonic()
    signal.signal(signal.SIGTERM, _raise_stop)
    with open(out, "a", buffering=1) as log:
        try:
            while True:
                now = time.monotonic()
                if now >= next_send:
                    seq += 1
                    try:
                        s.sendto(f"{seq} {now:.6f}".encode(), dst)
                        counts["sent"] += 1
                    except OSError:
                        # No route (yet), or an ICMP error queued by an earlier datagram: the
                        # missing answer is what the scenario measures.
                        counts["send_errors"] += 1
                    next_send += interval
                    if next_send < now:  # stalled: don't burst to catch up
                        next_send = now + interval
                ready, _, _ = select.select([s], [], [], max(0.0, next_send - time.monotonic()))
                if ready:
                    _receive(s, log, counts)
        except _Stop:
            return counts


def _receive(s: socket.socket, log: TextIO, counts: dict[str, int]) -> None:
    try:
        data, _ = s.recvfrom(2048)
    except OSError:
        return
    recv = time.monotonic()
    payload, _, via = data.decode(errors="replace").rpartition("|")
    seq, _, sent = payload.partition(" ")
    counts["replies"] += 1
    log.write(json.dumps({"seq": int(seq), "sent": float(sent), "recv": round(recv, 6),
                          "via": via}) + "\n")


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        socket.inet_aton(host)
        return host, int(port)
    except (OSError, ValueError):
        raise argparse.ArgumentTypeError(f"--to {text!r}: expected IPv4:PORT") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wiremesh.lab.echo")
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve")
    sp.add_argument("--port", type=int, required=True)
    cp = sub.add_parser("send")
    cp.add_argument("--to", type=_addr, required=True)
    cp.add_argument("--out", type=Path, required=True)
    cp.add_argument("--interval", type=float, default=0.01)
    args = p.parse_args(argv)
    if args.cmd == "serve":
        serve(args.port)
        return 0
    if args.interval <= 0:
        p.error("--interval: must be > 0")
    counts = send(args.to, args.out, args.interval)
    sys.stdout.write(json.dumps(counts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
