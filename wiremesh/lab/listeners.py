"""Tiny lab listeners: `python -m wiremesh.lab.listeners --tcp 22,8080 --udp 5353`.

TCP ports accept and close at once (a completed handshake is the whole answer a prober needs);
UDP ports echo every datagram back to its sender. Prints `ready` once every port is bound, so
a lab can wait for it in the log instead of sleeping.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


async def _accept_close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def serve(tcp: list[int], udp: list[int], host: str = "0.0.0.0") -> None:
    loop = asyncio.get_running_loop()
    servers = [await asyncio.start_server(_accept_close, host, p, reuse_address=True)
               for p in tcp]
    for p in udp:
        await loop.create_datagram_endpoint(_Echo, local_addr=(host, p))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers), asyncio.Event().wait())


def parse_ports(text: str) -> list[int]:
    try:
        ports = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port list {text!r}: expected N,N,...") from None
    if any(not 1 <= p <= 65535 for p in ports):
        raise argparse.ArgumentTypeError(f"bad port list {text!r}: ports are 1..65535")
    return ports


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tcp", type=parse_ports, default=[], help="TCP ports, comma separated")
    ap.add_argument("--udp", type=parse_ports, default=[], help="UDP ports, comma separated")
    args = ap.parse_args(argv)
    try:
        asyncio.run(serve(args.tcp, args.udp))
    except OSError as e:
        sys.exit(f"listeners: {e}")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
