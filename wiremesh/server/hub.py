"""The netmap hub: keeps every peer's current netmap and wakes the streams whose slice changed.

A peer's netmap version is the store revision at which its content last changed, so a change
that touches k peers wakes k streams and the rest keep their version. Each stream remembers what
it last sent and sends the diff, which also coalesces bursts of changes into one delta.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Protocol

from wiremesh.core.models import HeldMesh, MeshChange, MeshState
from wiremesh.core.netmap import PeersDiff, SharedPeersDiff, diff, diff_peers, digest
from wiremesh.core.policy import PolicyCompiler
from wiremesh.core.wire import (
    DEFAULT_MTU,
    DeltaMessage,
    DnsConfig,
    Netmap,
    NetmapPeer,
    Signer,
    encode_message,
)

log = logging.getLogger("wiremesh.server.hub")
# Old versions kept per peer, so an agent reconnecting at one gets a delta, not a full map
# (one that holds the current content resumes by its digest, whatever its version). Each is
# a whole netmap: at 10,000 peers more would cost gigabytes.
HISTORY = 4
COALESCE_S = 0.1  # a burst of changes (enrolments, a policy apply) becomes one refresh
KEEPALIVE_S = 15.0  # each open stream sends a keepalive line this often when idle
TICK_S = 1.0  # the keepalive timer wakes 1/15 of the streams each second


def delta_body(old: Netmap, new: Netmap,
               peers_diff: Callable[[dict[str, NetmapPeer], dict[str, NetmapPeer]],
                                    PeersDiff] = diff_peers) -> bytes:
    """The message taking a peer from `old` to `new`, unsealed (each stream seals it the way
    its agent asked). The server built it from the store, so it skips validation
    (`model_construct`); the agent validates every message it receives."""
    return encode_message(DeltaMessage.model_construct(delta=diff(old, new, peers_diff)))


def _encode_deltas(pairs: dict[int, tuple[Netmap, Netmap]]) -> dict[int, tuple[int, int, bytes]]:
    # One change moves hundreds of netmaps, most of them sharing a few peer tables.
    shared = SharedPeersDiff()
    return {pid: (old.version, new.version, delta_body(old, new, shared))
            for pid, (old, new) in pairs.items()}


class MeshSource(Protocol):
    """What the hub reads from the store."""

    async def load_state(self) -> tuple[int, MeshState]: ...

    async def load_since(self, revision: int, held: HeldMesh,
                         ) -> tuple[int, MeshChange] | None: ...

    async def revision(self) -> int: ...

    async def peer_exists(self, peer_id: int) -> bool: ...

    def credential(self, token: str) -> tuple[int, str] | None: ...


class NetmapHub:
    def __init__(self, store: MeshSource, signer: Signer, relays: Sequence[str] = (),
                 dns: DnsConfig | None = None, mtu: int = DEFAULT_MTU) -> None:
        self.store = store
        self.signer = signer
        self.relays = tuple(relays)  # advertised in every netmap
        self.dns = dns or DnsConfig()  # likewise
        self.mtu = mtu  # the mesh-wide WireGuard MTU, in every netmap
        self.revision = 0
        self.compiler: PolicyCompiler | None = None
        self._state: tuple[int, MeshState] = (0, MeshState())  # `state` at a revision
        # Per peer, the delta from its previous version to its current one, encoded once per
        # change (not once per stream): (from version, to version, message).
        self.latest_delta: dict[int, tuple[int, int, bytes]] = {}
        self._last_cost = 0.0
        self._busy = True  # had more changes come when the last refresh was sent? (`rest`)
        self._last_end = time.monotonic()  # when the last refresh that moved anything ended
        self.full_loads = 0  # refreshes that read the whole mesh (start, and gaps in the log)
        self.current: dict[int, Netmap] = {}
        self.history: dict[int, deque[Netmap]] = {}
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._digests: dict[int, tuple[int, str]] = {}  # peer id -> (version, digest of it)
        # Texts of the peer tables and rule sets netmaps share, for digests (see `digest`);
        # emptied at each refresh so it holds no replaced tables.
        self._digest_memo: dict[int, tuple[object, str]] = {}
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._stopping = False

    async def refresh(self) -> set[int]:
        """Read what changed in the store and recompile what it affects; returns the ids of
        peers whose netmap changed or vanished."""
        async with self._lock:
            return await self._refresh()

    @contextlib.asynccontextmanager
    async def settled(self) -> AsyncIterator[tuple[MeshState, PolicyCompiler | None]]:
        """The mesh at the store's latest revision (read-after-write) and its compiler,
        which no refresh moves while the caller holds them; the caller may move the compiler
        away only if it moves it back (a policy plan does: core/policyfile.py `plan`)."""
        async with self._lock:
            await self._refresh()
            yield self.state, self.compiler

    @property
    def state(self) -> MeshState:
        """The mesh at `revision` (made from the compiler when first asked at a revision:
        a pass over the mesh, which a refresh no longer makes)."""
        at, state = self._state
        if at != self.revision and self.compiler is not None:
            self._state = (self.revision, state := self.compiler.state())
        return state

    async def _refresh(self) -> set[int]:
        started = time.monotonic()
        compiler = self.compiler
        since = None if compiler is None else await self.store.load_since(self.revision,
                                                                          compiler)
        if compiler is not None and since is not None:
            rev, change = since
            if rev == self.revision:
                return set()
            t_loaded = time.monotonic()
            touched = await asyncio.to_thread(compiler.apply, change)
        else:
            rev, state = await self.store.load_state()
            self.full_loads += 1
            if rev == self.revision and compiler is not None:
                return set()
            t_loaded = time.monotonic()
            if compiler is None:
                compiler = self.compiler = await asyncio.to_thread(PolicyCompiler, state)
                touched = set(compiler.netmaps)
            else:
                touched = await asyncio.to_thread(compiler.update, state)
            self._state = (rev, state)
        # The compiler reports only netmaps whose content changed (or that vanished),
        # so every one of them gets the new version. Streams read `current` while the
        # deltas are encoded: it changes only once they are ready.
        fresh: dict[int, Netmap] = {}
        gone: list[int] = []
        pairs: dict[int, tuple[Netmap, Netmap]] = {}
        for pid in touched:
            nm = compiler.netmaps.get(pid)
            if nm is None:
                gone.append(pid)
                continue
            fresh[pid] = replace(nm, version=rev, relays=self.relays, dns=self.dns,
                                 mtu=self.mtu)
            old = self.current.get(pid)
            if old is not None:
                pairs[pid] = (old, fresh[pid])
        t_compiled = time.monotonic()
        encoded = await asyncio.to_thread(_encode_deltas, pairs)
        for pid in gone:
            self.current.pop(pid, None)
            self.history.pop(pid, None)
            self._digests.pop(pid, None)
        for pid, (old, _) in pairs.items():
            self.history.setdefault(pid, deque(maxlen=HISTORY)).append(old)
        self.current.update(fresh)
        self.revision = rev
        self._digest_memo.clear()
        for pid in touched:
            self.latest_delta.pop(pid, None)
        self.latest_delta.update(encoded)
        self._last_end = time.monotonic()
        # A full read (start, a gap in the log) says nothing of what the next change costs:
        # resting twice its time held the first change after a restart at 550k peers 94 s.
        self._last_cost = 0.0 if since is None else self._last_end - started
        for pid in touched:
            for ev in self._waiters.get(pid, ()):
                ev.set()
        log.info("revision %d: %d netmaps changed (load %.0f ms, compile %.0f ms, "
                 "encode %.0f ms)", rev, len(touched), (t_loaded - started) * 1e3,
                 (t_compiled - t_loaded) * 1e3, (time.monotonic() - t_compiled) * 1e3)
        return touched

    def idle_s(self) -> float:
        """Seconds since a refresh last changed anything (or since the hub started)."""
        return time.monotonic() - self._last_end

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
            if self._stopping:
                return
            await asyncio.sleep(self.rest())
            self._dirty.clear()
            try:
                touched = await self.refresh()
            except Exception:
                log.exception("netmap refresh failed")
                continue
            if touched:
                await self._fan_out()
            try:
                self._busy = await self.store.revision() != self.revision
            except Exception:
                log.exception("revision read failed")
                self._busy = True

    async def _fan_out(self) -> None:
        """Let the streams the last refresh woke send their lines, and count that as part of
        the refresh's cost. They all send in the loop's next pass (a write suspends a stream
        only when its connection is paused), and during an enrolment storm at 10,000 streams,
        when nearly every netmap changes at each refresh, that pass costs several times the
        refresh itself: left out, refreshing took most of the process, not a third."""
        if self._last_cost == 0.0:  # a full read: its cost says nothing of the next change
            return
        await asyncio.sleep(0)
        now = time.monotonic()
        self._last_cost += now - self._last_end
        self._last_end = now

    def rest(self) -> float:
        """Seconds to wait before the next refresh. Under sustained change (more had come by
        the time the last refresh's lines were sent), twice what that refresh cost, counted
        from its end: refreshing then never takes more than a third of the process from
        requests and streams, and more changes land in each refresh. Otherwise only the
        coalescing window: a change after the end of an enrolment storm does not wait out
        the storm's last rest (3 s at 10,000 streams)."""
        if not self._busy:
            return COALESCE_S
        return max(COALESCE_S, self._last_end + 2 * self._last_cost - time.monotonic())

    async def keepalives(self) -> None:
        """Wake every stream once per KEEPALIVE_S, so an idle one sends a keepalive line.
        One timer for all streams, a slice of them per tick: no per-stream timers waking
        the loop, and no burst of 10,000 lines at once."""
        buckets = round(KEEPALIVE_S / TICK_S)
        tick = 0
        while not self._stopping:
            await asyncio.sleep(TICK_S)
            tick = (tick + 1) % buckets
            for pid, waiters in self._waiters.items():
                if pid % buckets == tick:
                    for ev in waiters:
                        ev.set()

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

    def base_for(self, peer_id: int, version: int, held: str | None = None) -> Netmap | None:
        """The netmap an agent at `version` holds, if we know it: by version, or by the
        digest `held` of its content when the version is not one of ours (numbered by
        another replica, or by this one before a restart). A netmap found by digest is
        returned under the agent's version, so what follows is a delta from it."""
        cur = self.current.get(peer_id)
        if cur is not None and cur.version == version:
            return cur
        history = self.history.get(peer_id, ())
        for old in history:
            if old.version == version:
                return old
        if held is None or cur is None:
            return None
        if self.digest(cur) == held:
            # Same content under the agent's number. Versions are store revisions: one
            # above ours came from a replica that read a later revision, and our next
            # change gets a revision above it, so the stream goes on with deltas.
            return replace(cur, version=version)
        if cur.version > version:
            # The agent is behind us: a delta from the older netmap it holds, when we have
            # it, leads forward to ours.
            for old in reversed(history):
                if digest(old, self._digest_memo) == held:
                    return replace(old, version=version)
        return None

    def credential(self, token: str) -> tuple[int, str] | None:
        """(peer id, public key) of the peer holding `token` as of the hub's last read of the
        store, or None (not read yet: ask the store)."""
        return self.store.credential(token)

    def netmap(self, peer_id: int) -> Netmap | None:
        """The peer's current netmap (None: deleted, or enrolled and not compiled yet)."""
        return self.current.get(peer_id)

    async def peer_exists(self, peer_id: int) -> bool:
        return await self.store.peer_exists(peer_id)

    def delta(self, peer_id: int, old: Netmap, new: Netmap) -> bytes:
        """The message from `old` to `new`: the one encoded at the change when it is that
        step, else made for this stream."""
        pre = self.latest_delta.get(peer_id)
        if pre is not None and pre[:2] == (old.version, new.version):
            return pre[2]
        return delta_body(old, new)

    def connected(self, peer_id: int) -> bool:
        """Does this replica hold a stream (or relay session) of the peer?"""
        return peer_id in self._waiters

    def digest(self, nm: Netmap) -> str:
        """The digest of a peer's current netmap, computed once per version."""
        got = self._digests.get(nm.peer_id)
        if got is None or got[0] != nm.version:
            got = self._digests[nm.peer_id] = (nm.version, digest(nm, self._digest_memo))
        return got[1]

    @property
    def streams(self) -> int:
        return sum(len(w) for w in self._waiters.values())
