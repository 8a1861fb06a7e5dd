"""Token buckets and negative caches stay within their caps whatever strangers send."""

from __future__ import annotations

import pytest

from wiremesh.gateway.ratelimit import ExpiringLru, TokenBucket, TokenBucketTable


def test_bucket_allows_burst_then_rate() -> None:
    t = TokenBucketTable(rate=2.0, burst=3.0, capacity=10)
    assert [t.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert not t.allow("a", 0.2)  # 0.4 tokens refilled: not enough
    assert t.allow("a", 0.6)
    assert t.allow("b", 0.6)  # other sources are independent


def test_bucket_refill_is_capped_at_burst() -> None:
    t = TokenBucketTable(rate=100.0, burst=2.0, capacity=10)
    t.allow("a", 0.0)
    assert [t.allow("a", 1000.0) for _ in range(3)] == [True, True, False]


def test_bucket_table_is_bounded_lru() -> None:
    t = TokenBucketTable(rate=1.0, burst=1.0, capacity=100)
    for i in range(10_000):
        t.allow(i, 0.0)
    assert len(t) == 100
    assert t.allow(0, 0.0)  # forgotten: a fresh bucket (the documented price of churn)
    assert not t.allow(9_999, 0.0)  # still remembered and empty


def test_expiring_lru_bounds_and_expiry() -> None:
    c = ExpiringLru(capacity=3, ttl=10.0)
    for i in range(5):
        c.add(i, float(i))
    assert len(c) == 3
    assert not c.fresh(0, 5.0) and c.fresh(4, 5.0)
    assert not c.fresh(4, 14.5)


@pytest.mark.parametrize("args", [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_bucket_rejects_nonsense_limits(args: tuple) -> None:
    with pytest.raises(ValueError):
        TokenBucketTable(*args)


def test_global_bucket_with_fake_time() -> None:
    b = TokenBucket(rate=4.0, burst=5.0)
    assert sum(b.allow(100.0) for _ in range(20)) == 5  # a full burst at the start
    assert not b.allow(100.125)  # half a token
    assert b.allow(100.25) and not b.allow(100.25)
    assert sum(b.allow(200.0) for _ in range(20)) == 5  # refilled to the burst, no more
    assert not b.allow(199.0)  # a clock step back refills nothing


@pytest.mark.parametrize("args", [(0, 1), (1, 0.5)])
def test_global_bucket_rejects_nonsense_limits(args: tuple) -> None:
    with pytest.raises(ValueError):
        TokenBucket(*args)
