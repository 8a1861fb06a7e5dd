"""Kernel routes `prefix dev <ifname>` in the current network namespace (pyroute2).

Our routes carry their own protocol number, so a sync can tell them from anyone else's routes
(and clean up what a previous run left) without remembering anything.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

RTPROT_WIREMESH = 77  # unassigned in iproute2's rt_protos; shows as "proto 77" in `ip route`
_MAIN_TABLE = 254
_ENOENT, _ESRCH = 2, 3


class LinkMissing(RuntimeError):
    pass


def _norm(prefix: str) -> str:
    return str(ipaddress.ip_network(prefix, strict=False))


def sync_device_routes(ifname: str, prefixes: Iterable[str]) -> tuple[list[str], list[str]]:
    """Make our routes on `ifname` exactly `prefixes`; returns (added, removed).

    Raises LinkMissing when the interface does not exist (yet)."""
    wanted = {_norm(p) for p in prefixes}
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise LinkMissing(f"no interface {ifname}")
        oif = idx[0]
        have: set[str] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.route("dump", family=family, table=_MAIN_TABLE):
                if r.get("oif") == oif and r["proto"] == RTPROT_WIREMESH:
                    have.add(f"{r.get('dst')}/{r['dst_len']}")
        added = sorted(wanted - have)
        removed = sorted(have - wanted)
        for prefix in added:
            ipr.route("replace", dst=prefix, oif=oif, proto=RTPROT_WIREMESH, table=_MAIN_TABLE)
        for prefix in removed:
            try:
                ipr.route("del", dst=prefix, oif=oif, proto=RTPROT_WIREMESH, table=_MAIN_TABLE)
            except NetlinkError as e:
                if e.code not in (_ENOENT, _ESRCH):  # already gone: that is what we wanted
                    raise
    return added, removed
