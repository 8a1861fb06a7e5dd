"""The agent's side channel on its WireGuard port: datagrams sent *from* that port (so every
NAT on the way maps them exactly as it maps WireGuard's own traffic) and the answers, read
beside wireguard-go, which owns the socket and drops whatever is not WireGuard.

Two kinds of answers come back: STUN Binding responses (the NAT mapping of the WireGuard
socket, see discovery.py) and path probes between peers (see paths.py). An nftables rule
(firewall/side.py) moves them from the WireGuard port to a UDP socket of ours, on the ingress
hook of the devices underlay traffic arrives on; `follow()` moves it along when links or
addresses change.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pyroute2.netlink.exceptions import NetlinkError

from wiremesh.core.stun import MAGIC, Mapped, StunError, binding_request, parse_response
from wiremesh.firewall import nft, side
from wiremesh.netlink.addresses import underlay_devices
from wiremesh.netlink.watch import AddressWatch
from wiremesh.wg.tap import PortSender

log = logging.getLogger("wiremesh.agent.portside")
_MAGIC = MAGIC.to_bytes(4, "big")
# A device that vanished between listing and loading fails the load: list again, this often.
LOAD_TRIES = 3
POLL_S = 60.0  # how often devices and host firewall are looked at without a netlink wake-up

ProbeHandler = Callable[[bytes, str, int], None]  # payload, source address, source port


class PortSide:
    def __init__(self, port: int, wg_ifname: str,
                 hook: Literal["ingress", "input"] = "ingress") -> None:
        """`wg_ifname`: the agent's WireGuard interface (never an underlay device); `hook`:
        "input" keeps the redirect on the input hook, after a host firewall's verdict
        (firewall/side.py says when that matters)."""
        self.port, self.wg_ifname, self.hook = port, wg_ifname, hook
        self.sender = PortSender(port)
        self.sock = _answers_socket()
        self.on_probe: ProbeHandler | None = None
        self._stun: dict[bytes, asyncio.Future[Mapped]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # The redirect is (re)loaded from the event loop's thread and from worker threads.
        self._lock = threading.Lock()
        self._closed = False
        self._redirected = False
        # The underlay devices (name -> index) and host firewall the table was loaded for.
        self._listed: dict[str, int] | None = None
        self._firewall: str | None = None
        self.on_input = False  # the rule sits on the input hook (asked for, or the fallback)

    async def start(self) -> None:
        """Read answers; raises nft.NftError when the redirect cannot be installed."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock, self._readable)
        await asyncio.to_thread(self._install)

    async def follow(self) -> None:
        """Keep the redirect on the underlay devices of the moment (run while started)."""
        async with AddressWatch() as watch:
            while True:
                # Also when nothing changed: a host firewall started after the agent (as at
                # boot) is noticed within POLL_S, not at the next change of addresses.
                await watch.wait(POLL_S)
                await self.refresh()

    async def refresh(self) -> None:
        """Move the redirect to the underlay devices listed now, if they changed."""
        try:
            await asyncio.to_thread(self._install)
        except (nft.NftError, OSError, NetlinkError) as e:
            log.warning("side channel: cannot follow the underlay devices: %s", e)

    def _install(self) -> None:
        """Load the redirect for the underlay devices listed now, unless it is loaded for
        them already; on the input hook where a host firewall judges that hook, or when nft
        refuses the ingress chain (firewall/side.py says why)."""
        with self._lock:
            if self._closed:
                return
            listed = underlay_devices(self.wg_ifname) if self.hook == "ingress" else None
            firewall = _host_firewall() if listed is not None else None
            if self._redirected and (listed, firewall) == (self._listed, self._firewall):
                return
            refused: Exception | None = None
            if listed is not None and firewall is None:
                listed, refused = self._load_ingress(listed)
                if refused is None:
                    if self.on_input or not self._redirected:
                        log.info("side channel on the ingress hook of %s",
                                 ", ".join(listed) or "no device (no table)")
                    self._listed, self._firewall = listed, firewall
                    self._redirected, self.on_input = True, False
                    return
            nft.load(side.render(self.port, self._side_port(), None))
            if not self.on_input:
                # Once per move to the input hook. A refusal is tried again at the next change
                # of devices (rare), not remembered: it may have been a device that came and
                # went.
                why = (f"after the host firewall ({firewall})" if firewall is not None
                       else f"the ingress chain cannot be loaded ({refused})"
                       if refused is not None else "as configured")
                log.info("side channel on the input hook: %s", why)
            self._listed, self._firewall = listed, firewall
            self._redirected, self.on_input = True, True

    def _load_ingress(self, listed: dict[str, int]) -> tuple[dict[str, int], Exception | None]:
        """Load the rule on `listed`'s ingress, listing again when a device vanished between
        listing and loading; (the devices it was loaded for, None) or (..., the refusal)."""
        refused: Exception | None = None
        for _ in range(LOAD_TRIES):
            try:
                # No underlay device (only lo): nothing can arrive to be moved, so no table
                # at all until one appears (follow() wakes up for it).
                if listed:
                    nft.load(side.render(self.port, self._side_port(), list(listed)))
                else:
                    nft.remove(table=side.TABLE)
                return listed, None
            except (nft.NftError, ValueError) as e:
                refused = e
                fresh = underlay_devices(self.wg_ifname)
                if fresh == listed:
                    break  # not a device that vanished meanwhile
                listed = fresh
        return listed, refused

    def _side_port(self) -> int:
        return int(self.sock.getsockname()[1])

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
            with self._lock:
                self._closed = True
                if self._redirected:
                    nft.remove(table=side.TABLE)
                    self._redirected = False
        finally:
            if self._loop is not None:
                self._loop.remove_reader(self.sock)
            self.sock.close()
            self.sender.close()


def _host_firewall() -> str | None:
    legacy: list[str] = []
    for names in ("/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"):
        with contextlib.suppress(OSError):  # absent without the legacy modules
            legacy += Path(names).read_text().split()
    try:
        chains = nft.list_chains()
    except nft.NftError as e:  # e.g. an nft built without JSON: assume the worst, as before
        return f"cannot tell: {e}"
    return side.host_firewall(chains, legacy)


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
