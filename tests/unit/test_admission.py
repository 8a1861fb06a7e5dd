"""Admission of netmap stream openings: past the bound in progress, openings wait for their
turn in arrival order; past the bound of waiting ones, or after waiting too long, they are
refused (503)."""

from __future__ import annotations

import asyncio

from wiremesh.server.admission import Openings


async def test_openings_past_the_bound_wait_their_turn_in_order() -> None:
    ops = Openings(limit=1, waiting=8)
    first = await ops.take()
    assert first is not None and ops.admit() is None
    order: list[int] = []

    async def wait(i: int) -> None:
        got = await ops.take()
        assert got is not None
        order.append(i)
        got.done()

    waiters = [asyncio.create_task(wait(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert order == [] and ops.active == 1
    first.done()
    first.done()  # idempotent: hands over one turn only
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2] and ops.active == 0 and ops.refused == 0 and ops.waited == 3
    assert ops.admit() is not None


async def test_refused_when_too_many_wait_or_the_turn_is_too_long_coming() -> None:
    ops = Openings(limit=1, waiting=1, wait_s=0.05)
    held = await ops.take()
    assert held is not None
    late = asyncio.create_task(ops.take())
    await asyncio.sleep(0)
    assert await ops.take() is None  # one waits already
    assert await late is None  # no turn within wait_s
    assert ops.refused == 2
    held.done()
    assert ops.active == 0


async def test_a_waiter_that_goes_away_takes_no_place() -> None:
    ops = Openings(limit=1, waiting=4)
    held = await ops.take()
    assert held is not None
    gone = asyncio.create_task(ops.take())
    after = asyncio.create_task(ops.take())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    held.done()
    nxt = await after
    assert nxt is not None and ops.active == 1
    nxt.done()
    assert ops.active == 0 and ops.refused == 0
