"""Probe echo on a router peer: answers clients' failover probes through the tunnel.

A probe is a fixed-size datagram to UDP port PROBE_PORT on the router's overlay address;
the responder sends it back unchanged. Anything else is ignored, so the responder can never
amplify traffic or be talked into sending to a third party. Since WireGuard binds every inner
source address to one peer's key, an answer from the router's overlay address proves the whole
path (client -> tunnel -> router's WireGuard and network stack -> back) works.

The router's inbound ACL accepts it from the peers allowed to use its routes (see
wiremesh.firewall.render).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from wiremesh.core.failover import PROBE_PORT

PROBE_MAGIC = b"wmP1"
PROBE_SIZE = 20  # magic (4) + sender nonce (8) + sequence number (8)

# Linux's IP_FREEBIND (not exported by the socket module): bind to an address that is not
# configured yet, so the responder may start before the agent assigns the overlay address.
_IP_FREEBIND = 15


def is_probe(data: bytes) -> bool:
    return len(data) == PROBE_SIZE and data.startswith(PROBE_MAGIC)


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if is_probe(data):
            self.transport.sendto(data, addr)


async def start_responder(address: str, port: int = PROBE_PORT) -> asyncio.DatagramTransport:
    """Answer probes on `address` (the router's overlay IP) until the transport is closed."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)  # honoured by IPv6 sockets too
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Echo, sock=sock)
    return transport
