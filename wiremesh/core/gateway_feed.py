"""Which peers a JIT gateway must know, from the policies (pure).

A gateway admits a peer when some enabled policy lets that peer reach the gateway: the
policy's destinations name a group the gateway is in (or `all`), and the peer is in one of
its sources; a bidirectional policy also works the other way round. Protocols and ports do
not matter here: the gateway installs the peer and its own firewall (if any) filters.
"""

from __future__ import annotations

from collections.abc import Iterable

from wiremesh.core.models import Policy
from wiremesh.core.policy import ALL_GROUP


def admitted_groups(policies: Iterable[Policy], gateway_groups: Iterable[str]) -> frozenset[str]:
    """The groups whose members a gateway in `gateway_groups` must know (may hold `all`)."""
    mine = set(gateway_groups) | {ALL_GROUP}
    out: set[str] = set()
    for p in policies:
        if not p.enabled:
            continue
        if mine & set(p.destinations):
            out |= set(p.sources)
        if p.bidirectional and mine & set(p.sources):
            out |= set(p.destinations)
    return frozenset(out)
