"""Overlay address management (pure): indexes into 100.64.0.0/10, skipping reserved ones."""

from __future__ import annotations

import ipaddress
from collections.abc import Container

OVERLAY_NET = ipaddress.ip_network("100.64.0.0/10")
# Index 0 is the network address and the last one its broadcast: never hand them out.
FIRST, LAST = 1, OVERLAY_NET.num_addresses - 2


class IpamExhausted(RuntimeError):
    pass


def address_at(index: int) -> str:
    if not FIRST <= index <= LAST:
        raise ValueError(f"index {index} is outside {OVERLAY_NET}")
    return str(OVERLAY_NET[index])


def next_free_index(cursor: int, used: Container[str], limit: int = LAST) -> int:
    """The first index at or after `cursor` (wrapping once) whose address is not in use."""
    start = cursor if FIRST <= cursor <= limit else FIRST
    idx = start
    while True:
        if address_at(idx) not in used:
            return idx
        idx = idx + 1 if idx < limit else FIRST
        if idx == start:
            raise IpamExhausted(f"no free address left in {OVERLAY_NET}")
