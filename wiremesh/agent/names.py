"""Names for peers on this machine: the resolver (agent/resolver.py) plus its place in the
system resolver (agent/sysdns.py), kept in step with the netmap.

DNS is a convenience on top of the mesh: when it cannot be set up (port 53 taken, resolvectl
failing) the agent says so and runs on without it.
"""

from __future__ import annotations

import asyncio
import logging

from wiremesh.agent.resolver import ResolverService, start_resolver
from wiremesh.agent.sysdns import SysDnsError, SystemDns
from wiremesh.core.names import NameTable
from wiremesh.core.wire import Netmap

log = logging.getLogger("wiremesh.agent.names")


class NameService:
    def __init__(self, system: SystemDns, address: str, port: int = 53) -> None:
        self.system = system
        self.address = address
        self.port = port
        self.service: ResolverService | None = None
        self._domains: tuple[str, ...] | None = None  # what the system resolver routes to us

    async def start(self, netmap: Netmap | None) -> None:
        try:
            self.service = await start_resolver(self.address, (), self.port)
        except OSError as e:
            log.error("no names for peers: cannot listen on %s:%d: %s", self.address,
                      self.port, e)
            return
        await self.set_netmap(netmap)

    async def set_netmap(self, netmap: Netmap | None) -> None:
        if self.service is None:
            return
        if netmap is not None:
            self.service.resolver.set_netmap(netmap)
        domains = NameTable.of(netmap).routed_domains
        if domains == self._domains:
            return
        try:
            if self._domains is not None:
                await asyncio.to_thread(self.system.restore)
            self._domains = None
            upstream = await asyncio.to_thread(self.system.install, self.address, domains)
        except (SysDnsError, OSError) as e:
            log.error("cannot wire names into the system resolver: %s", e)
            return
        self.service.resolver.upstream = upstream
        self._domains = domains

    async def close(self) -> None:
        try:
            if self._domains is not None:
                await asyncio.to_thread(self.system.restore)
        except (SysDnsError, OSError) as e:
            log.error("cannot restore the system resolver: %s", e)
        finally:
            self._domains = None
            if self.service is not None:
                self.service.close()
