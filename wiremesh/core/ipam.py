"""Overlay address management (pure): indexes into 100.64.0.0/10, skipping reserved ones."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

OVERLAY_NET = ipaddress.ip_network("100.64.0.0/10")
# Index 0 is the network address and the last one its broadcast: never hand them out.
FIRST, LAST = 1, OVERLAY_NET.num_addresses - 2


def address_at(index: int) -> str:
    if not FIRST <= index <= LAST:
        raise ValueError(f"index {index} is outside {OVERLAY_NET}")
    return str(OVERLAY_NET[index])


def index_of(address: str) -> int:
    return int(ipaddress.ip_address(address)) - int(OVERLAY_NET.network_address)


def indexes_from(cursor: int, limit: int = LAST) -> Iterator[int]:
    """Every index once, in the order addresses are handed out: from `cursor` (FIRST when
    it is out of range) up to `limit`, then wrapping around from FIRST."""
    start = cursor if FIRST <= cursor <= limit else FIRST
    yield from range(start, limit + 1)
    yield from range(FIRST, start)
