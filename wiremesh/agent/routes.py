"""Routed prefixes on a client: which router peer holds each one, kept true to the probes.

The RouteManager owns the failover state machine, feeds it probe answers and WireGuard
handshake ages, and turns its decisions into data plane changes:
- allowed IPs: a routed prefix sits only on its active router's peer; a failover rewrites
  the peers that lost or gained prefixes in ONE backend write, so there is never a moment with
  the prefix on two peers or on none;
- kernel routes: every routed prefix goes `dev <wg interface>` (independent of the active
  router, so a failover never touches them); the exit node's `0.0.0.0/0`, when this machine
  opted in, goes in through policy routing instead (agent/exitnode.py), so the server, relays
  and peers' endpoints stay outside.

Everything is local: it keeps failing over with the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable

from pyroute2.netlink.exceptions import NetlinkError

from wiremesh.agent.dataplane import desired_peers
from wiremesh.agent.exitnode import ExitRouting
from wiremesh.agent.prober import Prober
from wiremesh.core.exitnode import EXIT_PREFIX, chosen_routes, is_exit
from wiremesh.core.failover import PROBE_PORT, FailoverConfig, FailoverMachine
from wiremesh.core.wire import Netmap, RouteEntry
from wiremesh.netlink.routes import LinkMissing, sync_device_routes
from wiremesh.wg.backend import WgBackend, WgError

log = logging.getLogger("wiremesh.agent.routes")
# What a WireGuard backend or netlink call may raise when the device is briefly unavailable;
# every such call is retried on a later tick.
_BACKEND_ERRORS = (WgError, OSError, NetlinkError)


class RouteManager:
    def __init__(
        self,
        ifname: str,
        config: FailoverConfig | None = None,
        *,
        probe_interval: float = 0.1,
        probe_port: int = PROBE_PORT,
        handshake_poll: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        exit_routing: ExitRouting | None = None,
    ) -> None:
        if probe_interval <= 0:
            raise ValueError(f"probe_interval: must be > 0, got {probe_interval!r}")
        self.ifname = ifname
        self.machine = FailoverMachine(config, probe_interval)
        self.probe_interval = probe_interval
        self.probe_port = probe_port
        self.handshake_poll = handshake_poll
        self._clock = clock
        self.netmap: Netmap | None = None
        self._dirty_peers: set[str] = set()
        self._wg_lock = asyncio.Lock()
        self._routes_synced = False
        # Set by a new netmap: wakes the loop, which sleeps while there is no router to probe.
        self._netmap_taken = asyncio.Event()
        self.failovers = 0
        self.exit_routing = exit_routing
        self.exit_choice: str | None = None  # None, "auto" or an exit node's name
        self.exit_allow_lan = False

    # --- what the agent calls ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def applying(self, netmap: Netmap | None) -> AsyncIterator[None]:
        """Take a new netmap (from the stream or the saved state) and hold off failover writes
        while the agent writes its WireGuard peers inside the block:

            async with routes.applying(netmap):
                await asyncio.to_thread(dataplane.apply, netmap)  # uses routed_prefixes

        so the agent's write, computed from `routed_prefixes`, can never land after (and undo)
        a failover decided meanwhile. `None` rewrites for the netmap already taken."""
        async with self._wg_lock:
            if netmap is not None:
                self._set_netmap(netmap)
            yield

    def set_exit(self, choice: str | None, allow_lan: bool) -> None:
        """The exit node choice; it takes effect with the next netmap taken (the agent
        re-applies the one it holds)."""
        self.exit_choice, self.exit_allow_lan = choice, allow_lan
        self._routes_synced = False

    def routed_prefixes(self, key: str) -> tuple[str, ...]:
        """The prefixes peer `key` must carry in its allowed IPs right now (besides its own
        overlay address): the `extra_allowed` hook of `dataplane.desired_peers`."""
        return tuple(sorted(p for p, k in self.machine.actives().items() if k == key))

    def snapshot(self) -> dict[str, object]:
        """Active router per prefix and health per router (for logs, metrics, the lab)."""
        return {
            "active": self.machine.actives(),
            "health": {k: h.name.lower() for k in self.machine.routers()
                       if (h := self.machine.health(k)) is not None},
            "failovers": self.failovers,
        }

    async def run(self, backend: WgBackend) -> None:
        """Probe, judge and apply until cancelled. `backend` is the agent's WireGuard device.

        Backend and netlink calls go to a worker thread: pyroute2's sync API (kernel backend,
        routes) runs an event loop of its own and must stay off ours."""
        prober = Prober(self.ifname, self._on_reply, port=self.probe_port, clock=self._clock)
        next_probe = next_handshake = self._clock()
        try:
            while True:
                now = self._clock()
                if now >= next_probe:
                    await self._probe_round(prober)
                    next_probe += self.probe_interval
                    if next_probe <= now:  # we fell behind (loop stall): don't burst
                        next_probe = now + self.probe_interval
                if now >= next_handshake:
                    await self._poll_handshakes(backend)
                    next_handshake = now + self.handshake_poll
                if not self._wg_lock.locked():  # else the agent is applying: judge next tick
                    async with self._wg_lock:
                        before = self.machine.actives()
                        self._note(self.machine.tick(self._clock()), before)
                        await self._flush(backend)
                if not self._routes_synced:
                    await self._sync_routes()
                if not self.machine.routers() and self._routes_synced and not self._dirty_peers:
                    # Nothing to probe or judge: an idle agent (most of them) must not wake
                    # 40 times a second for nothing, as it did, costing a laptop's battery.
                    self._netmap_taken.clear()
                    await self._netmap_taken.wait()
                    next_probe = next_handshake = self._clock()
                    continue
                # Judge again at the next probe round or the moment a probe's deadline passes,
                # whichever comes first (no fixed tick: it woke an agent 40 times a second).
                wake = next_probe
                verdict = self.machine.next_deadline()
                if verdict is not None:
                    wake = min(wake, verdict)
                await asyncio.sleep(max(0.0, wake - self._clock()))
        finally:
            prober.close()

    # --- internals -------------------------------------------------------------------------

    def _set_netmap(self, netmap: Netmap) -> None:
        self.netmap = netmap
        # A router the netmap does not list as a peer can't hold a prefix: we'd have no
        # WireGuard peer to put it on.
        routes = [
            RouteEntry(r.name, r.prefix, tuple(x for x in r.routers if x[0] in netmap.peers))
            for r in chosen_routes(netmap, self.exit_choice)
        ]
        if self.exit_choice and not any(is_exit(r) for r in routes):
            log.warning("exit node %s: not offered to this peer (policy, or no such peer); "
                        "traffic for the internet waits in the tunnel rather than leaving "
                        "unprotected (`wiremesh set --exit-node none` sends it directly)",
                        self.exit_choice)
        before = self.machine.actives()
        self._note(self.machine.set_routes(routes, self._clock()), before)
        self._routes_synced = False
        self._netmap_taken.set()

    def _on_reply(self, key: str, sent_at: float, received_at: float) -> None:
        self.machine.probe_reply(key, sent_at, received_at)

    async def _probe_round(self, prober: Prober) -> None:
        for key in self.machine.routers():
            peer = self.netmap.peers.get(key) if self.netmap else None
            if peer is None:
                continue
            now = self._clock()
            self.machine.probe_sent(key, now)
            await prober.send(key, peer.overlay_ip, now)

    async def _poll_handshakes(self, backend: WgBackend) -> None:
        keys = self.machine.routers()
        if not keys:
            return
        try:
            peers = (await asyncio.to_thread(backend.status)).peers
        except _BACKEND_ERRORS as e:
            log.warning("handshake poll on %s failed: %s", self.ifname, e)
            return
        wall, now = time.time(), self._clock()
        for key in keys:
            st = peers.get(key)
            age = wall - st.last_handshake if st and st.last_handshake else None
            self.machine.handshake_age(key, age, now)

    def _note(self, changes: dict[str, str | None], before: dict[str, str | None]) -> None:
        for prefix, new in changes.items():
            old = before.get(prefix)
            if old is not None and new is not None:
                self.failovers += 1
            health = self.machine.health(old) if old else None
            log.info("route prefix=%s active=%s previous=%s previous_health=%s", prefix,
                     _short(new), _short(old), health.name.lower() if health is not None else None)
            self._dirty_peers.update(k for k in (old, new) if k is not None)
            if old is None or new is None:  # a prefix appeared or went away
                self._routes_synced = False

    async def _flush(self, backend: WgBackend) -> None:
        """Write every peer whose allowed IPs changed, in one backend call."""
        if not self._dirty_peers or self.netmap is None:
            return
        want = desired_peers(self.netmap, self.routed_prefixes)
        # endpoint=None leaves the current (possibly roamed) endpoint alone.
        upsert = [dataclasses.replace(want[k], endpoint=None)
                  for k in sorted(self._dirty_peers) if k in want]
        try:
            await asyncio.to_thread(backend.set_peers, upsert, [])
        except _BACKEND_ERRORS as e:
            log.warning("failover write on %s failed (will retry): %s", self.ifname, e)
            return
        self._dirty_peers.clear()

    async def _sync_routes(self) -> None:
        actives = self.machine.actives()
        prefixes = [p for p, k in actives.items() if k is not None and p != EXIT_PREFIX]
        try:
            added, removed = await asyncio.to_thread(sync_device_routes, self.ifname, prefixes)
            if self.exit_routing is not None:
                # On while this machine opted in, even with no exit node alive or offered
                # (policy withdrew it, a mistyped name): traffic then waits for one instead
                # of leaving unprotected, as the user asked.
                await asyncio.to_thread(self.exit_routing.sync, self.netmap,
                                        self.exit_choice is not None, self.exit_allow_lan)
        except LinkMissing:
            return  # the agent has not created the interface yet; try again next tick
        except _BACKEND_ERRORS as e:
            log.warning("route sync on %s failed (will retry): %s", self.ifname, e)
            return
        self._routes_synced = True
        if added or removed:
            log.info("kernel routes dev=%s added=%s removed=%s", self.ifname, added, removed)


def _short(key: str | None) -> str | None:
    return key[:8] if key else None

