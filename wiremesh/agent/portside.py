"""The agent's side channel on its WireGuard port: datagrams sent *from* that port (so every
NAT on the way maps them exactly as it maps WireGuard's own traffic) and the answers, read
beside wireguard-go, which owns the socket and drops whatever is not WireGuard.

Two kinds of answers come back: STUN Binding responses (the NAT mapping of the WireGuard
socket, see discovery.py) and path probes between peers (see paths.py). An nftables rule
(firewall/side.py) moves them from the WireGuard port to a UDP socket of ours.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Callable

from wiremesh.core.stun import MAGIC, Mapped, StunError, binding_request, parse_response
from wiremesh.firewall import nft, side
from wiremesh.wg.tap import PortSender

log = logging.getLogger("wiremesh.agent.portside")
_MAGIC = MAGIC.to_bytes(4, "big")

ProbeHandler = Callable[[bytes, str, int], None]  # payload, source address, source port


class PortSide:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sender = PortSender(port)
        self.sock = _answers_socket()
        self.on_probe: ProbeHandler | None = None
        self._stun: dict[bytes, asyncio.Future[Mapped]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redirected = False

    def start(self) -> None:
        """Read answers; raises nft.NftError when the redirect cannot be installed."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock, self._readable)
        nft.load(side.render(self.port, self.sock.getsockname()[1]))
        self._redirected = True

    def _readable(self) -> None:
        while True:
            try:
                payload, addr = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("side channel receive: %s", e)
                return
            ip = ipaddress.ip_address(addr[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped  # the dual-stack socket's view of an IPv4 sender
            src, sport = str(ip), addr[1]
            if payload[4:8] == _MAGIC:
                try:
                    txid, mapped = parse_response(payload)
                except StunError as e:
                    log.debug("dropped a STUN answer from %s: %s", src, e)
                    continue
                fut = self._stun.pop(txid, None)
                if fut is not None and not fut.done():
                    fut.set_result(mapped)
            elif self.on_probe is not None:
                self.on_probe(payload, src, sport)

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
        try:
            if self._redirected:
                nft.remove(table=side.TABLE)
                self._redirected = False
        finally:
            if self._loop is not None:
                self._loop.remove_reader(self.sock)
            self.sock.close()
            self.sender.close()


def _answers_socket() -> socket.socket:
    """A UDP socket on a free port for IPv4 and IPv6 alike (IPv4 alone where the host has no
    IPv6)."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 0))
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
    sock.setblocking(False)
    return sock
