"""Which values of a unique column rows hold, asked of the database for the candidates only.

Enrolment needs a free name and a free overlay address per peer. Reading the whole column
for that makes each enrolment batch cost O(peers); asking whether these few candidates are
taken is one index lookup each, whatever the size of the mesh. Answers are remembered for
the transaction, and values given out in it are added, so a batch asks once per candidate.
Only right inside a write transaction (`Database.tx`, the only writer while it lasts); the
columns' unique constraints stay the authority should anything else write them.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from itertools import islice
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

# Bound parameters per statement (SQLite caps them; PostgreSQL plans long lists slowly).
MAX_ASKED = 500


class Taken:
    def __init__(self, s: AsyncSession, column: Any) -> None:
        self._s = s
        self._column = column
        self._taken: set[str] = set()
        self._free: set[str] = set()

    async def learn(self, values: Iterable[str]) -> None:
        """Ask the database about those of `values` not asked about yet."""
        unknown = sorted({v for v in values if v not in self._taken and v not in self._free})
        for at in range(0, len(unknown), MAX_ASKED):
            chunk = unknown[at:at + MAX_ASKED]
            found = set(await self._s.scalars(
                select(self._column).where(self._column.in_(chunk))))
            self._taken |= found
            self._free.update(v for v in chunk if v not in found)

    async def is_taken(self, value: str) -> bool:
        await self.learn((value,))
        return value in self._taken

    async def first_free(self, candidates: Iterator[str], also_taken: Container[str] = (),
                         ask: int = 64) -> str | None:
        """The first of `candidates` no row holds and not in `also_taken`; None when they
        run out. An unknown candidate is asked about together with the `ask` - 1 after it
        (twice as many each round after), so a run of enrolments asks once per `ask`."""
        for v in candidates:
            if v in self._taken or v in also_taken:
                continue
            if v in self._free:
                return v
            chunk = [v, *islice(candidates, ask - 1)]
            await self.learn(chunk)
            for c in chunk:
                if c not in self._taken and c not in also_taken:
                    return c
            ask = min(2 * ask, MAX_ASKED)
        return None

    def take(self, value: str) -> None:
        """`value` is now held (given out in this transaction)."""
        self._taken.add(value)
        self._free.discard(value)
