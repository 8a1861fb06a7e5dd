"""Endpoint discovery: the addresses other peers may reach this agent's WireGuard port at.

Candidates are this namespace's interface addresses (peers on the same LAN) and the NAT
mapping of the WireGuard socket itself, measured with a STUN Binding request sent *from* the
WireGuard port to the server's STUN responder (portside.py); the server adds the address the
report came from. They are measured again as soon as a link or address of this machine
changes (netlink notifications), a few more times in the seconds after while the new network
settles, and otherwise every `interval` seconds (a NAT that rebinds without any local
change); they are reported whenever they change, which is how a roaming agent or a rebound
NAT mapping reaches the other peers. An idle agent measures nothing in between.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from wiremesh.agent import metrics
from wiremesh.agent.client import ServerClient, ServerRefused
from wiremesh.agent.connection import raise_if_cancelled
from wiremesh.agent.portside import PortSide
from wiremesh.agent.state import AgentConfig
from wiremesh.netlink.addresses import local_addresses
from wiremesh.netlink.watch import AddressWatch

log = logging.getLogger("wiremesh.agent.discovery")
INTERVAL_S = 15.0  # with no local change: how soon a NAT rebinding is noticed
RETRY_S = 1.0  # after a local change, or while STUN answers are missing
SETTLE_CHECKS = 3  # measurements RETRY_S apart after a change (DHCP, routes, NAT settle)
MAX_MISSES = 3

Candidates = list[dict[str, str]]


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class Discovery:
    def __init__(self, client: ServerClient, cfg: AgentConfig, side: PortSide | None,
                 interval: float = INTERVAL_S,
                 on_moved: Callable[[], None] = lambda: None) -> None:
        """`on_moved()`: our addresses or NAT mapping changed (roaming)."""
        self.client, self.cfg, self.side, self.interval = client, cfg, side, interval
        self.on_moved = on_moved
        self.reported: Candidates | None = None
        self.local: set[str] | None = None
        self.moved = False
        self.stun_port: int | None = None
        self.mapped: str | None = None
        self.misses = 0

    async def _stun_server(self) -> tuple[str, int] | None:
        """The replica the agent talks to now (not the first one given: it may be the one
        that died), at the next of its name's addresses after each unanswered measurement
        (one name for several replicas: the first address may be the dead one's)."""
        if self.side is None or self.stun_port is None:
            return None
        host = urlsplit(self.client.server).hostname
        if not host:
            return None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, self.stun_port, type=socket.SOCK_DGRAM)
        except OSError as e:
            log.warning("cannot resolve the server %s for STUN: %s", host, e)
            return None
        return str(infos[self.misses % len(infos)][4][0]), self.stun_port

    async def candidates(self) -> Candidates:
        port = self.cfg.listen_port
        local = await asyncio.to_thread(local_addresses, self.cfg.interface)
        if self.local is not None and set(local) != self.local:
            self.moved = True
            if self.side is not None:
                # The STUN answer comes back on the new address's device: the side channel's
                # rule must be there first (its own wake-up by the same change may come later).
                await self.side.refresh()
        self.local = set(local)
        out = [{"endpoint": _endpoint(ip, port), "kind": "local"} for ip in local]
        server = await self._stun_server()
        if server is not None and self.side is not None:
            mapped = await self.side.stun(server)
            metrics.STUN.labels("answered" if mapped else "unanswered").inc()
            if mapped is not None:
                if str(mapped) != self.mapped:
                    log.info("WireGuard port %d is mapped to %s", port, mapped)
                    # A new mapping is a move (NAT rebinding, another network); the first
                    # one, or one after losing it, is not.
                    self.moved |= self.mapped is not None
                self.mapped, self.misses = str(mapped), 0
            else:
                # One lost datagram must not make every peer rewrite its endpoints.
                self.misses += 1
                if self.misses >= MAX_MISSES:
                    self.mapped = None
            if self.mapped is not None:
                out.insert(0, {"endpoint": self.mapped, "kind": "mapped"})
        return out

    async def report(self, candidates: Candidates) -> None:
        answer: dict[str, Any] = await self.client.report_endpoints(
            self.cfg.listen_port, self.cfg.endpoints, candidates)
        self.reported = candidates
        self.stun_port = answer.get("stun_port")

    async def refresh(self) -> None:
        """Measure now; report if anything changed (or nothing was reported yet)."""
        found = await self.candidates()
        if self.moved:
            # Roamed or rebound: paths are looked for again at once, and connections to the
            # server through the old network are dropped before the report is sent.
            self.moved = False
            log.info("this agent moved: %s", ", ".join(c["endpoint"] for c in found))
            self.on_moved()
            await self.client.reset()
        if found != self.reported:
            await self.report(found)
            if self.stun_port is not None and not any(c["kind"] == "mapped" for c in found):
                # First report: the answer named the STUN port; measure the mapping now.
                found = await self.candidates()
                if found != self.reported:
                    await self.report(found)
            log.info("reported candidates %s", ", ".join(
                f"{c['endpoint']} ({c['kind']})" for c in self.reported or []))

    async def run(self) -> None:
        settling = 0
        async with AddressWatch() as watch:
            while True:
                quick = settling > 0 or 0 < self.misses < MAX_MISSES
                if await watch.wait(RETRY_S if quick else self.interval):
                    settling = SETTLE_CHECKS
                settling = max(0, settling - 1)
                await self._refresh_logged()

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except (httpx.HTTPError, OSError, ServerRefused) as e:
            raise_if_cancelled()
            # The netmap stream notices a dead server; keep measuring meanwhile.
            log.warning("cannot report candidates: %s", e)
