"""Admission control for netmap stream openings.

When a replica dies, every agent it served reconnects to the survivors at once. Each opening
costs a token lookup, a netmap digest or a full map; past a bound, a survivor answers 503
with Retry-After (spread over a few seconds) instead of queueing without limit, so it keeps
serving the streams it holds and the storm drains at the rate it can take.
"""

from __future__ import annotations

import random

MAX_OPENING = 256  # stream openings that have not sent their first line yet
RETRY_AFTER_S = (1, 5)  # whole seconds, drawn at random so retries do not come back together


class Opening:
    """One admitted opening; `done()` (idempotent) once its first line is out or it ends."""

    def __init__(self, owner: Openings) -> None:
        self._owner: Openings | None = owner

    def done(self) -> None:
        if self._owner is not None:
            self._owner.active -= 1
            self._owner = None


class Openings:
    def __init__(self, limit: int = MAX_OPENING) -> None:
        self.limit = limit
        self.active = 0
        self.refused = 0

    def admit(self) -> Opening | None:
        """An opening, or None when `limit` are already in progress."""
        if self.active >= self.limit:
            self.refused += 1
            return None
        self.active += 1
        return Opening(self)

    @staticmethod
    def retry_after() -> str:
        return str(random.randint(*RETRY_AFTER_S))
