"""Client side of failover probing: small UDP datagrams through the tunnel to each candidate
router's overlay address, answered by its probe responder.

A probe to a standby router goes to that router's overlay /32, which sits on the router's
WireGuard peer whichever router holds the routed prefix, so standby routers are measured as
well as the active one. The socket is bound to the WireGuard interface, so a probe can never
leave by another route and make a router look alive when the tunnel is not.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable

from wiremesh.agent.probe_responder import PROBE_MAGIC, PROBE_SIZE, is_probe
from wiremesh.core.failover import PROBE_PORT

log = logging.getLogger(__name__)

OnReply = Callable[[str, float, float], None]  # (router key, sent at, received at)


class Prober:
    def __init__(
        self,
        ifname: str,
        on_reply: OnReply,
        *,
        port: int = PROBE_PORT,
        clock: Callable[[], float] = time.monotonic,
        forget_after: float = 10.0,
    ) -> None:
        self.ifname = ifname
        self.port = port
        self._on_reply = on_reply
        self._clock = clock
        self._forget_after = forget_after
        # A per-run nonce: answers to an earlier run's probes (or anyone's) are not ours.
        self._nonce = os.urandom(8)
        self._seq = 0
        self._pending: OrderedDict[int, tuple[str, str, float]] = OrderedDict()
        self._transports: dict[int, asyncio.DatagramTransport] = {}

    async def _transport(self, family: int) -> asyncio.DatagramTransport:
        t = self._transports.get(family)
        if t is not None and not t.is_closing():
            return t
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.ifname.encode())
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_datagram_endpoint(
            lambda: _Replies(self._received, self.ifname), sock=sock)
        self._transports[family] = t
        return t

    async def send(self, key: str, address: str, sent_at: float | None = None) -> None:
        """Send one probe to `address` (router `key`'s overlay IP). Failures to send are
        swallowed: an unanswered probe is exactly how a broken path must look. `sent_at` is
        the time the caller recorded for it: the reply reports that very value, so the caller
        can match it (a second clock reading here never equals the caller's)."""
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        now = self._clock() if sent_at is None else sent_at
        self._seq += 1
        self._pending[self._seq] = (key, address, now)
        while self._pending:
            seq, (_, _, sent) = next(iter(self._pending.items()))
            if now - sent < self._forget_after:
                break
            del self._pending[seq]
        try:
            t = await self._transport(family)
            t.sendto(PROBE_MAGIC + self._nonce + struct.pack("!Q", self._seq),
                     (address, self.port))
        except OSError as e:
            log.debug("probe to %s via %s not sent: %s", address, self.ifname, e)
            if e.errno in (errno.ENODEV, errno.ENXIO):
                # The interface was recreated; bind a fresh socket on the next probe.
                self._close_family(family)

    def _received(self, data: bytes, addr: tuple) -> None:
        if not is_probe(data) or data[4:12] != self._nonce:
            return
        (seq,) = struct.unpack("!Q", data[12:PROBE_SIZE])
        entry = self._pending.get(seq)
        if entry is None:
            return
        key, address, sent = entry
        if ipaddress.ip_address(addr[0]) != ipaddress.ip_address(address):
            return
        del self._pending[seq]
        self._on_reply(key, sent, self._clock())

    def _close_family(self, family: int) -> None:
        t = self._transports.pop(family, None)
        if t is not None:
            t.close()

    def close(self) -> None:
        for family in list(self._transports):
            self._close_family(family)


class _Replies(asyncio.DatagramProtocol):
    def __init__(self, received: Callable[[bytes, tuple], None], ifname: str) -> None:
        self.received = received
        self.ifname = ifname

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (e.g. port unreachable from a router without a responder): the missing
        # answer already says it all.
        log.debug("probe socket error on %s: %s", self.ifname, exc)
