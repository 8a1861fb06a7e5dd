"""Admission control for netmap stream openings.

When a replica dies, every agent it served reconnects to the survivors at once. Each opening
costs a token check, a netmap digest and its first line; past a bound of openings in
progress, more wait for their turn (first come, first served) instead of being refused: by
then an agent has paid its TLS handshake, and a refusal would have it pay another when it
comes back. Past a bound of waiting ones too, or after waiting too long, a survivor answers
503 with Retry-After (spread over a few seconds), so it keeps serving the streams it holds
and the storm drains at the rate it can take.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque

MAX_OPENING = 256  # stream openings that have not sent their first line yet
MAX_WAITING = 8192  # openings waiting for one of those to end
WAIT_S = 20.0  # the longest wait (an agent gives up on an answer after 45 s)
RETRY_AFTER_S = (1, 5)  # whole seconds, drawn at random so retries do not come back together


class Opening:
    """One admitted opening; `done()` (idempotent) once its first line is out or it ends."""

    def __init__(self, owner: Openings) -> None:
        self._owner: Openings | None = owner

    def done(self) -> None:
        if self._owner is not None:
            self._owner._release()
            self._owner = None


class Openings:
    def __init__(self, limit: int = MAX_OPENING, waiting: int = MAX_WAITING,
                 wait_s: float = WAIT_S) -> None:
        self.limit, self.max_waiting, self.wait_s = limit, waiting, wait_s
        self.active = 0
        self.refused = 0
        self.waited = 0  # openings that waited for a turn (refused later or not)
        self._turns: deque[asyncio.Future[None]] = deque()

    def admit(self) -> Opening | None:
        """An opening now, or None when `limit` are in progress or others wait first."""
        if self.active >= self.limit or self._turns:
            return None
        self.active += 1
        return Opening(self)

    async def take(self) -> Opening | None:
        """An opening, after waiting for a turn when `limit` are in progress; None (refuse
        it) when `max_waiting` wait already or no turn came within `wait_s`."""
        got = self.admit()
        if got is not None:
            return got
        if len(self._turns) >= self.max_waiting:
            self.refused += 1
            return None
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns.append(turn)
        self.waited += 1
        try:
            await asyncio.wait_for(asyncio.shield(turn), self.wait_s)
        except BaseException as e:  # waited too long, or the client went away
            if turn.done():
                self._release()  # the turn came in the same instant: pass it on
            else:
                turn.cancel()
                self._turns.remove(turn)
            if isinstance(e, TimeoutError):
                self.refused += 1
                return None
            raise
        return Opening(self)  # the ended opening's place, handed over by `_release`

    def _release(self) -> None:
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.active -= 1

    @staticmethod
    def retry_after() -> str:
        return str(random.randint(*RETRY_AFTER_S))
