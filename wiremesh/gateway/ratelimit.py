"""Bounded per-source state: token buckets and negative caches that never outgrow their cap.

A stranger chooses how many source addresses and keys it sends from, so every table keyed by
what a stranger sends is an LRU with a fixed number of entries: a flood churns the table
instead of growing it. The price of churn is that an evicted source comes back with a full
bucket; the cap is sized so that legitimate sources are not pushed out by a normal day.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class ExpiringLru:
    """A set of at most `capacity` members, each forgotten `ttl` seconds after it was added.

    The expiry lets a negative answer ("unknown key") change once the store learns the key.
    """

    def __init__(self, capacity: int, ttl: float) -> None:
        if capacity < 1 or ttl <= 0:
            raise ValueError("capacity must be at least 1 and ttl positive")
        self.capacity = capacity
        self.ttl = ttl
        self._items: OrderedDict[Hashable, float] = OrderedDict()

    def add(self, item: Hashable, now: float) -> None:
        self._items.pop(item, None)
        self._items[item] = now
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def fresh(self, item: Hashable, now: float) -> bool:
        added = self._items.get(item)
        return added is not None and now - added < self.ttl

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _check_rate(rate: float, burst: float) -> None:
    if rate <= 0 or burst < 1:
        raise ValueError("rate must be > 0 and burst >= 1")


def _refill(tokens: float, last: float, now: float, rate: float, burst: float) -> float:
    """A bucket's tokens at `now`, refilled since `last`."""
    return min(burst, tokens + max(0.0, now - last) * rate)


def _take(tokens: float, last: float, now: float, rate: float, burst: float) -> tuple[bool, float]:
    """Refill a bucket from `last` to `now`, then take one token if there is one."""
    tokens = _refill(tokens, last, now, rate, burst)
    return (True, tokens - 1.0) if tokens >= 1.0 else (False, tokens)


class TokenBucket:
    """One bucket: `rate` tokens/s up to `burst` (a global budget)."""

    def __init__(self, rate: float, burst: float) -> None:
        _check_rate(rate, burst)
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = float("-inf")

    def allow(self, now: float) -> bool:
        ok, self._tokens = _take(self._tokens, self._last, now, self.rate, self.burst)
        self._last = max(self._last, now)
        return ok


class TokenBucketTable:
    """Per-source token buckets: `rate` tokens/s up to `burst`, at most `capacity` sources."""

    def __init__(self, rate: float, burst: float, capacity: int) -> None:
        _check_rate(rate, burst)
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.rate = rate
        self.burst = burst
        self.capacity = capacity
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def allow(self, source: Hashable, now: float) -> bool:
        tokens, last = self._buckets.pop(source, (self.burst, now))
        ok, tokens = _take(tokens, last, now, self.rate, self.burst)
        self._buckets[source] = (tokens, now)
        if len(self._buckets) > self.capacity:
            self._buckets.popitem(last=False)
        return ok

    def empty(self, source: Hashable, now: float) -> bool:
        """Would `allow` refuse this source now? (Takes nothing.)"""
        got = self._buckets.get(source)
        if got is None:
            return False
        return _refill(*got, now, self.rate, self.burst) < 1.0

    def __len__(self) -> int:
        return len(self._buckets)
