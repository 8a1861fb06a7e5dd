"""The agent's side channel on its WireGuard port, in nftables (render is pure).

The agent sends STUN requests and path probes *from* the WireGuard port (agent/portside.py), so
their answers arrive at that port, which wireguard-go owns and where it drops whatever is not
WireGuard. One stateless rule hands them to a UDP socket of the agent instead: a datagram to
the WireGuard port whose payload cannot be a WireGuard message (those start with a type byte
and three zero bytes, which wireguard-go insists on; STUN answers and path probes never do)
gets its destination port rewritten to the agent's port before the socket lookup. WireGuard's
own packets only cost that rule's comparisons (a mask, no set lookup).

It replaced a packet socket per address family: with one bound to IPv4, the kernel cloned every
IPv4 packet the host received (the underlay's and the tunnel's) in ip_rcv, because the packet
socket held a reference to it, and ran the filter on each.

The chain sits on the input hook after the usual filter priority, so a host firewall judges
these answers on the WireGuard port exactly like WireGuard's own packets; it uses no conntrack.
"""

from __future__ import annotations

TABLE = "wiremesh_side"
# After `filter` (0): host firewalls (ufw, firewalld at filter + 10) see the WireGuard port.
PRIORITY = 50


def _port(port: int, what: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{what}: {port!r} is not a port number 1..65535")
    return port


def render(wg_port: int, side_port: int) -> str:
    """The script for `nft -f` that (re)creates the table in one transaction."""
    wg, side = _port(wg_port, "wg_port"), _port(side_port, "side_port")
    if wg == side:
        raise ValueError(f"side_port: {side} is the WireGuard port")
    return "\n".join([
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "\tchain input {",
        f"\t\ttype filter hook input priority {PRIORITY}; policy accept;",
        # @th,72,24: the three bytes after the first of the UDP payload.
        f"\t\tudp dport {wg} @th,72,24 != 0 udp dport set {side}",
        "\t}",
        "}",
        "",
    ])
