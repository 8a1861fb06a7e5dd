"""Simulated NATs: a router namespace per NAT with its WAN on the internet and a LAN switch of
its own (198.19.N.0/24), translating with nftables inside that namespace only.

Like a home router, the NAT drops what arrives unasked on its WAN in the input hook, so such a
packet never becomes a conntrack entry: it cannot take the public port a LAN socket will want
next (filtering by address and port, as conntrack does, and nothing else)."""

from __future__ import annotations

from dataclasses import dataclass

from wiremesh.lab.layout import NatKind
from wiremesh.lab.netns import Host, Switch

TABLE = "wmlab_nat"
LAN_PREFIX = "198.19"


def lan_subnet(index: int) -> str:
    """The private LAN of NAT number `index` (1-based)."""
    if not 1 <= index <= 255:
        raise ValueError(f"NAT index {index} does not fit {LAN_PREFIX}.0.0/16")
    return f"{LAN_PREFIX}.{index}.0/24"


def render_ruleset(kind: NatKind, wan: str, lan: str) -> str:
    """The NAT's whole nftables ruleset (`nft -f`), for interfaces `wan` and `lan`."""
    masquerade = "masquerade fully-random" if kind is NatKind.RANDOM_PORT else "masquerade"
    # Only TCP leaves a UDP-blocked network (ICMP neither: it would only tell lies about UDP).
    outbound = (f'iifname "{lan}" oifname "{wan}" meta l4proto tcp accept'
                if kind is NatKind.UDP_BLOCKED else f'iifname "{lan}" oifname "{wan}" accept')
    return f"""\
table ip {TABLE} {{
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "{wan}" {masquerade}
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\t{outbound}
\t}}
\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname "{wan}" ct state established,related accept
\t\tiifname "{wan}" drop
\t}}
}}
"""


@dataclass
class Nat:
    name: str
    kind: NatKind
    router: Host
    lan: Switch
    wan_ip: str  # the public address every host behind it shares
    lan_ip: str  # the LAN side: the hosts' default gateway
