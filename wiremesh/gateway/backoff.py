"""When to try a failing resource again: exponential backoff that never blocks the caller.

The sniffer thread must keep reading packets while the peer store is locked, so it does not
sleep between tries: it asks `ready(now)` and skips the store until the next try is due.
"""

from __future__ import annotations


class Backoff:
    def __init__(self, initial: float = 0.1, cap: float = 5.0) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError("initial must be positive and cap at least initial")
        self.initial = initial
        self.cap = cap
        self.failures = 0
        self._delay = 0.0
        self._next_try = 0.0

    def ready(self, now: float) -> bool:
        return now >= self._next_try

    def failed(self, now: float) -> float:
        """Record a failure at `now`; returns the delay until the next try."""
        self.failures += 1
        self._delay = min(self.cap, self._delay * 2 if self._delay else self.initial)
        self._next_try = now + self._delay
        return self._delay

    def succeeded(self) -> int:
        """Record a success; returns how many failures in a row it ends (0 = none)."""
        ended, self.failures = self.failures, 0
        self._delay = self._next_try = 0.0
        return ended
