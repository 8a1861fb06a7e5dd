"""TCP bulk transfer between two lab hosts, for throughput over the overlay.

    python -m wiremesh.lab.bulk recv --port P             prints "ready", then after the
                                                          sender is done one JSON line
                                                          {"bytes": n, "seconds": s}
    python -m wiremesh.lab.bulk send --to IP:P --seconds S

The receiver times from its first byte to the end of the stream, so connection set-up (and a
WireGuard handshake) does not count against the throughput.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

CHUNK = 64 * 1024


def listen(port: int, host: str = "0.0.0.0") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(1)
    return s


def receive(server: socket.socket, timeout_s: float) -> dict[str, float]:
    """Accept one sender and read until it closes."""
    server.settimeout(timeout_s)
    conn, _ = server.accept()
    with conn:
        conn.settimeout(timeout_s)
        total, first = 0, None
        while data := conn.recv(CHUNK):
            if first is None:
                first = time.monotonic()
            total += len(data)
        seconds = time.monotonic() - first if first is not None else 0.0
    return {"bytes": total, "seconds": seconds}


def send(host: str, port: int, seconds: float, timeout_s: float = 10.0) -> int:
    """Send zeros to host:port for `seconds`; returns the bytes sent."""
    buf = bytes(CHUNK)
    sent = 0
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            s.sendall(buf)
            sent += len(buf)
    return sent


def mbit_per_s(figures: dict[str, float]) -> float | None:
    if figures["seconds"] <= 0:
        return None
    return figures["bytes"] * 8 / figures["seconds"] / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wiremesh.lab.bulk")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--timeout", type=float, default=30.0)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True, help="IP:PORT")
    s.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    if args.cmd == "recv":
        with listen(args.port) as server:
            print("ready", flush=True)
            print(json.dumps(receive(server, args.timeout)), flush=True)
    else:
        host, _, port = args.to.rpartition(":")
        print(json.dumps({"sent": send(host, int(port), args.seconds)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
