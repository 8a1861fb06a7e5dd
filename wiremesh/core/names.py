"""Names for peers (pure): what the agent's resolver answers for a query name.

A peer's netmap lists exactly the peers policy lets it see, so the name table is built from
it alone: `<peer name>.<mesh domain>` for each of them and for this peer itself. Anything
else under the mesh domain does not exist (NXDOMAIN), so a name never tells a peer about
another it may not reach. Names in a split-DNS zone go to that zone's nameservers (the most
specific zone wins); every other name goes to the system's previous nameservers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from wiremesh.core.wire import DnsConfig, Netmap, check_dns_name


@dataclass(frozen=True)
class Answer:
    """A name of the mesh domain: `address` is its overlay IPv4, None when the name does
    not exist."""

    address: str | None


@dataclass(frozen=True)
class Pointer:
    """The reverse name of a known overlay address: PTR to its name."""

    target: str


@dataclass(frozen=True)
class Forward:
    """A name of a split-DNS zone: ask these nameservers."""

    zone: str
    nameservers: tuple[str, ...]


@dataclass(frozen=True)
class Upstream:
    """Not ours: ask the system's own nameservers."""


Decision = Answer | Pointer | Forward | Upstream


def _in(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


@dataclass(frozen=True)
class NameTable:
    domain: str
    hosts: dict[str, str]  # fully qualified name -> overlay IP
    reverse: dict[str, str]  # in-addr.arpa name -> fully qualified name
    zones: tuple[tuple[str, tuple[str, ...]], ...]  # most specific first

    @classmethod
    def of(cls, netmap: Netmap | None) -> NameTable:
        dns = netmap.dns if netmap is not None else DnsConfig()
        hosts: dict[str, str] = {}
        if netmap is not None:
            # Sorted, so two names differing only in case resolve the same way everywhere.
            pairs = sorted([(netmap.name, netmap.overlay_ip),
                            *((p.name, p.overlay_ip) for p in netmap.peers.values())])
            for name, ip in pairs:
                try:
                    fqdn = check_dns_name(f"{name}.{dns.domain}")
                except ValueError:
                    continue  # a peer name DNS cannot carry has no name
                hosts.setdefault(fqdn, ip)
        reverse = {reverse_name(ip): fqdn for fqdn, ip in sorted(hosts.items(), reverse=True)}
        zones = tuple(sorted(((z.zone, z.nameservers) for z in dns.zones),
                             key=lambda z: -len(z[0])))
        return cls(dns.domain, hosts, reverse, zones)

    def decide(self, qname: str) -> Decision:
        """What to do with a query for `qname` (any case, trailing dot or not)."""
        name = qname.lower().removesuffix(".")
        if _in(name, self.domain):
            return Answer(self.hosts.get(name))
        if name in self.reverse:
            return Pointer(self.reverse[name])
        for zone, servers in self.zones:
            if _in(name, zone):
                return Forward(zone, servers)
        return Upstream()

    @property
    def routed_domains(self) -> tuple[str, ...]:
        """The domains this resolver must be asked for (systemd-resolved routing)."""
        return (self.domain, *(z for z, _ in self.zones))
