"""The server's STUN responder: answers Binding requests with the address they came from.

Agents send the request from their WireGuard port, so the answer is the NAT mapping of the
WireGuard socket itself (see agent/discovery.py). Junk is counted and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from wiremesh.core.stun import Mapped, StunError, binding_response, parse_request
from wiremesh.server import metrics

log = logging.getLogger("wiremesh.server.stun")
DEFAULT_PORT = 3478


class _Responder(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            txid = parse_request(data)
        except StunError as e:
            metrics.STUN.labels("refused").inc()
            log.debug("dropped a datagram from %s: %s", addr[0], e)
            return
        metrics.STUN.labels("answered").inc()
        self.transport.sendto(binding_response(txid, Mapped(addr[0], addr[1])), addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("STUN socket: %s", exc)


async def start_stun(host: str, port: int) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Responder, local_addr=(host, port))
    return transport
