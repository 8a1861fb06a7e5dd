"""Keeps the garbage collector's full passes away from netmap changes.

CPython finds reference cycles by walking every object it tracks, and runs a full pass when a
quarter of its old generation is new: on a server that just grew to 10,000 streams, in the
middle of the next burst of changes. Such a server tracks ~2.3 million objects (about 150 per
open stream: the ASGI stack's coroutines, the TLS objects, the stream's state), and a full
pass holds the GIL for ~2.7 s: changes committed then reached their streams up to 3.5 s late
(`bench/scale.py --agents 10000`).

So what has lived through a tick is frozen (out of the collector's sight; freezing is O(1)),
and the automatic passes walk only what is younger. Cycles that frozen objects belong to (a
closed stream's exception and its frames) are freed only by a full pass over everything,
which runs once the mesh has been quiet for `quiet` seconds, at most every `every` seconds,
and at the latest after twice that however busy the mesh is.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from wiremesh.server import metrics

log = logging.getLogger("wiremesh.server.collector")
TICK_S = 1.0
EVERY_S = 600.0
QUIET_S = 30.0


class Collector:
    def __init__(self, idle_s: Callable[[], float], every: float = EVERY_S,
                 quiet: float = QUIET_S, tick: float = TICK_S) -> None:
        """`idle_s`: seconds since the mesh last changed."""
        self.idle_s, self.every, self.quiet, self.tick = idle_s, every, quiet, tick
        self._last_full = time.monotonic()
        self._stopping = False

    def due(self) -> bool:
        since = time.monotonic() - self._last_full
        return since >= 2 * self.every or (since >= self.every and self.idle_s() >= self.quiet)

    def full_pass(self) -> int:
        """Collect everything, frozen or not; returns the number of objects freed."""
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        took = time.perf_counter() - started
        self._last_full = time.monotonic()
        metrics.GC_FULL.observe(took)
        log.info("full garbage collection: %d objects freed in %.0f ms", freed, took * 1e3)
        return freed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            if self._stopping:
                return
            if self.due():
                self.full_pass()
            else:
                gc.freeze()

    def stop(self) -> None:
        """End `run` and give the collector back everything frozen."""
        self._stopping = True
        gc.unfreeze()
