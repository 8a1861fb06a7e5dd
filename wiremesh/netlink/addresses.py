"""Interface addresses and link state in the current network namespace (pyroute2)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP


def ensure_address(ifname: str, address: str, prefix_len: int) -> None:
    """Give `ifname` exactly this address (idempotent) and bring it up."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise RuntimeError(f"no interface {ifname}")
        i = idx[0]
        have = {
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=i, family=2)
        }
        for addr, plen in have - {(address, prefix_len)}:
            ipr.addr("del", index=i, address=addr, prefixlen=plen)
        if (address, prefix_len) not in have:
            try:
                ipr.addr("add", index=i, address=address, prefixlen=prefix_len)
            except NetlinkError as e:
                if e.code != 17:  # EEXIST: raced with ourselves, fine
                    raise
        ipr.link("set", index=i, state="up")


def set_link_mtu(ifname: str, mtu: int) -> None:
    """Set `ifname`'s MTU (wireguard-go follows its TUN device's MTU changes)."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise RuntimeError(f"no interface {ifname}")
        ipr.link("set", index=idx[0], mtu=mtu)


@dataclass(frozen=True)
class _Address:
    ifname: str
    index: int
    up: bool
    address: str
    prefix_len: int


def _global_addresses(exclude_ifname: str) -> list[_Address]:
    out = []
    with IPRoute() as ipr:
        links = {link["index"]: link for link in ipr.get_links()}
        for a in ipr.get_addr():
            link = links.get(a["index"])
            if a["scope"] != 0 or link is None:
                continue
            name = str(link.get_attr("IFLA_IFNAME"))
            if name in (exclude_ifname, "lo"):
                continue
            out.append(_Address(name, a["index"], bool(link["flags"] & IFF_UP),
                                a.get_attr("IFA_ADDRESS"), a["prefixlen"]))
    return out


def local_addresses(exclude_ifname: str) -> list[str]:
    """Global-scope addresses of this namespace's interfaces, except `exclude_ifname` (the
    WireGuard interface, whose overlay address is no candidate) and loopback."""
    return [a.address for a in _global_addresses(exclude_ifname)]


def local_networks(exclude_ifname: str) -> list[str]:
    """The networks those addresses sit on (the local LANs), as prefixes."""
    return sorted({str(ipaddress.ip_interface(f"{a.address}/{a.prefix_len}").network)
                   for a in _global_addresses(exclude_ifname)})


def underlay_devices(exclude_ifname: str) -> dict[str, int]:
    """The interfaces underlay traffic arrives on: those that are up and carry one of those
    addresses, as name -> index (a device deleted and created again under the same name is a
    new one: whatever was bound to the old one by name is gone)."""
    return {a.ifname: a.index for a in _global_addresses(exclude_ifname) if a.up}
