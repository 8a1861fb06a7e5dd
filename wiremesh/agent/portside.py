"""The agent's side channel on its WireGuard port: datagrams sent *from* that port (so every
NAT on the way maps them exactly as it maps WireGuard's own traffic) and the answers, read
beside wireguard-go, which owns the socket and drops whatever is not WireGuard.

Two kinds of answers come back: STUN Binding responses (the NAT mapping of the WireGuard
socket, see discovery.py) and path probes between peers (see paths.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Callable

from wiremesh.core.stun import MAGIC, Mapped, StunError, binding_request, parse_response
from wiremesh.wg.tap import PacketTap, PortSender, not_wireguard_filter

log = logging.getLogger("wiremesh.agent.portside")
_MAGIC = MAGIC.to_bytes(4, "big")

ProbeHandler = Callable[[bytes, str, int], None]  # payload, source address, source port


class PortSide:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sender = PortSender(port)
        self.tap = PacketTap(not_wireguard_filter(port), rcvbuf=1 << 20)
        self.on_probe: ProbeHandler | None = None
        self._stun: dict[bytes, asyncio.Future[Mapped]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for fd in self.tap.filenos():
            self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        for cap in self.tap.read(0):
            src = str(ipaddress.ip_address(cap.src_addr))
            if cap.payload[4:8] == _MAGIC:
                try:
                    txid, mapped = parse_response(cap.payload)
                except StunError as e:
                    log.debug("dropped a STUN answer from %s: %s", src, e)
                    continue
                fut = self._stun.pop(txid, None)
                if fut is not None and not fut.done():
                    fut.set_result(mapped)
            elif self.on_probe is not None:
                self.on_probe(cap.payload, src, cap.src_port)

    def send(self, payload: bytes, dst: tuple[str, int]) -> bool:
        try:
            self.sender.sendto(payload, dst)
        except OSError as e:
            log.debug("cannot send to %s:%d from port %d: %s", *dst, self.port, e)
            return False
        return True

    async def stun(self, server: tuple[str, int], timeout: float = 0.3,
                   tries: int = 3) -> Mapped | None:
        """The address and port the STUN server sees this WireGuard port as, or None."""
        loop = asyncio.get_running_loop()
        for _ in range(tries):
            txid = os.urandom(12)
            fut = self._stun[txid] = loop.create_future()
            try:
                if self.send(binding_request(txid), server):
                    return await asyncio.wait_for(fut, timeout)
                await asyncio.sleep(timeout)
            except TimeoutError:
                continue
            finally:
                self._stun.pop(txid, None)
        return None

    def close(self) -> None:
        if self._loop is not None:
            for fd in self.tap.filenos():
                self._loop.remove_reader(fd)
        self.tap.close()
        self.sender.close()
