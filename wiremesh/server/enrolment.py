"""Enrolment batching: concurrent enrolments share one store transaction.

While one batch commits, newly arrived requests queue up and go together in the next, so a
burst of agents costs a few transactions instead of one each; a single enrolment still goes
at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from wiremesh.store.enrolment import Enrolled, Enrolment, NewPeer
from wiremesh.store.errors import StoreError

log = logging.getLogger("wiremesh.server.enrolment")
MAX_BATCH = 128

_Item = tuple[NewPeer, "asyncio.Future[Enrolled]"]


class EnrolmentQueue:
    def __init__(self, store: Enrolment) -> None:
        self.store = store
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()

    async def submit(self, req: NewPeer) -> Enrolled:
        """The enrolled peer, or raises the StoreError that refused it."""
        fut: asyncio.Future[Enrolled] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((req, fut))
        return await fut

    def stop(self) -> None:
        self._queue.put_nowait(None)

    async def run(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            stopping = False
            while len(batch) < MAX_BATCH and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            await self._commit(batch)
            if stopping:
                return

    async def _commit(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        try:
            results = await self.store.enroll_many([req for req, _ in batch])
        except Exception as e:  # the store failed: every waiter learns it, the loop goes on
            log.exception("enrolment batch of %d failed", len(batch))
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        log.debug("enrolment batch of %d in %.0f ms", len(batch),
                 (time.monotonic() - started) * 1e3)
        for (_, fut), res in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(res, StoreError):
                fut.set_exception(res)
            else:
                fut.set_result(res)
