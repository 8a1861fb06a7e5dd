"""Exit-node routing on this machine: what core/exitnode.py decides, applied with the policy
routing of netlink/policyroute.py. Runs in a worker thread (netlink, name lookups)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from wiremesh.agent.relay_link import replica_relay_urls
from wiremesh.core.exitnode import bypass
from wiremesh.core.wire import Netmap
from wiremesh.netlink.addresses import local_networks
from wiremesh.netlink.policyroute import sync_exit_routing

log = logging.getLogger("wiremesh.agent.exitnode")


def _addresses(urls: Iterable[str]) -> list[str]:
    """The addresses of the URLs' hosts (looked up when a host is a name)."""
    out: list[str] = []
    for url in urls:
        host = urlsplit(url).hostname
        if not host:
            continue
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as e:
            log.warning("cannot look up %s to keep it outside the exit node: %s", host, e)
            continue
        out += [str(i[4][0]) for i in infos]
    return out


class ExitRouting:
    def __init__(self, ifname: str, servers: Sequence[str]) -> None:
        self.ifname = ifname
        self.servers = tuple(servers)  # every replica: the agent moves to another one alone
        self.applied: list[str] | None = None

    def sync(self, netmap: Netmap | None, on: bool, allow_lan: bool) -> bool:
        """Route everything but the bypass into the tunnel (`on`), or nothing; returns
        whether anything changed."""
        want = None
        if on and netmap is not None:
            infra = _addresses([*self.servers, *replica_relay_urls(self.servers, netmap.relays)])
            want = bypass(netmap, infra, local_networks(self.ifname), allow_lan)
        if want == self.applied:
            return False
        sync_exit_routing(self.ifname, want)
        self.applied = want
        log.info("exit node routing %s", "off" if want is None else
                 f"on; outside the tunnel: {', '.join(want) or 'nothing'}")
        return True

    def off(self) -> None:
        sync_exit_routing(self.ifname, None)
        self.applied = None
