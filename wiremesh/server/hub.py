"""The netmap hub: keeps every peer's current netmap and wakes the streams whose slice changed.

A peer's netmap version is the store revision at which its content last changed, so a change
that touches k peers wakes k streams and the rest keep their version. Each stream remembers what
it last sent and sends the diff, which also coalesces bursts of changes into one delta.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import replace

from wiremesh.core.models import MeshState
from wiremesh.core.netmap import Netmap
from wiremesh.core.policy import compile_netmaps
from wiremesh.store.repo import Store

log = logging.getLogger("wiremesh.server.hub")
HISTORY = 16  # old versions kept per peer so a reconnecting agent gets a delta, not a full map


class NetmapHub:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.revision = 0
        self.state = MeshState()
        self.current: dict[int, Netmap] = {}
        self.history: dict[int, deque[Netmap]] = {}
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._stopping = False

    async def refresh(self) -> set[int]:
        """Reload the store and recompute; returns the ids of peers whose netmap changed."""
        async with self._lock:
            rev, state = await self.store.load_state()
            if rev == self.revision:
                return set()
            compiled = await asyncio.to_thread(compile_netmaps, state)
            changed: set[int] = set()
            current: dict[int, Netmap] = {}
            for pid, nm in compiled.items():
                old = self.current.get(pid)
                if old is not None and old.same_content(nm):
                    current[pid] = old
                    continue
                current[pid] = replace(nm, version=rev)
                if old is not None:
                    self.history.setdefault(pid, deque(maxlen=HISTORY)).append(old)
                changed.add(pid)
            gone = set(self.current) - set(current)
            for pid in gone:
                self.history.pop(pid, None)
            self.current, self.state, self.revision = current, state, rev
            for pid in changed | gone:
                for ev in self._waiters.get(pid, ()):
                    ev.set()
            log.info("revision %d: %d netmaps changed, %d peers gone", rev, len(changed),
                     len(gone))
            return changed

    def poke(self) -> None:
        """Ask the background loop to refresh (changes are coalesced)."""
        self._dirty.set()

    async def run(self, poll_interval: float = 1.0) -> None:
        """Refresh on poke, and poll the store's revision so changes made through another
        replica (same database) reach this replica's streams too."""
        while not self._stopping:
            try:
                await asyncio.wait_for(self._dirty.wait(), poll_interval)
            except TimeoutError:
                try:
                    if await self.store.revision() == self.revision:
                        continue
                except Exception:  # a store hiccup must not kill the loop
                    log.exception("revision poll failed")
                    continue
            self._dirty.clear()
            if self._stopping:
                return
            try:
                await self.refresh()
            except Exception:
                log.exception("netmap refresh failed")

    def stop(self) -> None:
        """End `run` at its next safe point (never in the middle of a store read)."""
        self._stopping = True
        self._dirty.set()

    def subscribe(self, peer_id: int) -> asyncio.Event:
        ev = asyncio.Event()
        self._waiters.setdefault(peer_id, set()).add(ev)
        return ev

    def unsubscribe(self, peer_id: int, ev: asyncio.Event) -> None:
        waiters = self._waiters.get(peer_id)
        if waiters is not None:
            waiters.discard(ev)
            if not waiters:
                del self._waiters[peer_id]

    def base_for(self, peer_id: int, version: int) -> Netmap | None:
        """The netmap an agent at `version` holds, if we still know it."""
        cur = self.current.get(peer_id)
        if cur is not None and cur.version == version:
            return cur
        for old in self.history.get(peer_id, ()):
            if old.version == version:
                return old
        return None

    @property
    def streams(self) -> int:
        return sum(len(w) for w in self._waiters.values())
