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

Where the rule sits: on the netdev `ingress` hook of the underlay devices (those that are up
and carry an address, agent/portside.py keeps the list current), not on the `input` hook. A
chain on `input` is run for every packet the host receives, underlay and overlay alike, the
tunnel's decrypted traffic included: in iperf3 runs (8 alternating rounds, two cores; README,
the data plane's measured variants) the mesh reached 0.935 of a plain wireguard-go pair with
this rule on `input` and 0.977 with it on the underlay's ingress (0.992 with no tables at all).
On ingress, only packets arriving on the underlay devices meet it, and nothing else in the host
pays for a hook.

The trade-off: ingress runs before everything else, so the rewrite happens *before* a host
firewall looks (on `input`, the chain ran after the filter priority and the firewall judged
these datagrams on the WireGuard port, like WireGuard's own). From ingress, a host firewall
would see STUN answers and path probes addressed to the agent's side port, an ephemeral port
that differs per agent, and conntrack would not know them either: the requests left from the
WireGuard port, so an answer rewritten to another port is not the reply of that flow. A host
firewall that lets in only udp/<WireGuard port> (and established flows) would drop them:
WireGuard would keep working, but the agent would learn no NAT mapping and find no direct path
by probing (peers would fall back to the addresses they know, or the relay).

So the agent keeps the rule on `input` (after the firewall, as before) wherever a host firewall
hooks in there: a base chain on the input hook in a table not ours (nftables, and iptables-nft,
which is nftables underneath), or a legacy iptables `filter` table (see `host_firewall`), and
where nft cannot list the chains to tell. Those hosts pay for a chain on `input` as before: a
second chain on a hook already in use is not free either (same runs: 0.896 with the ACL and
this rule in two chains on `input`, 0.924 with the rule moved into the ACL's chain). A firewall
that starts after the agent is noticed at the next look (agent/portside.py: at every link or
address change, and every POLL_S without one); one that hooks in elsewhere (prerouting, an
eBPF program) is not looked for.

A packet is only seen if it arrives on a listed device: an answer arriving on a device without
an address of its own (weak host model, asymmetric routes) or through loopback is not moved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from wiremesh.firewall.render import IFNAME, drop_table

TABLE = "wiremesh_side"
# On `input`: after `filter` (0), so host firewalls (ufw, firewalld at filter + 10) see the
# WireGuard port. On `ingress` the priority only orders it among other ingress chains.
PRIORITY = 50


def _port(port: int, what: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{what}: {port!r} is not a port number 1..65535")
    return port


def _device(name: str) -> str:
    if not isinstance(name, str) or not IFNAME.fullmatch(name):
        raise ValueError(f"devices: {name!r} is not an interface name "
                         "(1-15 of A-Z a-z 0-9 _ . -)")
    return name


def host_firewall(chains: Iterable[Mapping[str, Any]],
                  legacy_tables: Iterable[str] = ()) -> str | None:
    """What judges received datagrams by their port on the input hook, besides us: the first
    base chain there of a table not ours (`chains`: nft's JSON of `list chains`), or a legacy
    iptables filter table (`legacy_tables`: /proc/net/ip{,6}_tables_names); None if neither.
    Our own tables are left out: the ACL judges only what comes out of the tunnel."""
    for c in chains:
        if (c.get("hook") == "input" and c.get("family") in ("ip", "ip6", "inet")
                and not str(c.get("table", "")).startswith("wiremesh")):
            return f"chain {c['family']} {c['table']} {c.get('name', '?')}"
    if "filter" in legacy_tables:
        return "the legacy iptables filter table"
    return None


def render(wg_port: int, side_port: int, devices: Sequence[str] | None) -> str:
    """The script for `nft -f` that (re)creates the table in one transaction: on the ingress
    hook of `devices` (a non-empty list of underlay interface names), or on the input hook
    when `devices` is None (the fallback; see the module's docstring)."""
    wg, side = _port(wg_port, "wg_port"), _port(side_port, "side_port")
    if wg == side:
        raise ValueError(f"side_port: {side} is the WireGuard port")
    if devices is None:
        family, chain = "inet", f"type filter hook input priority {PRIORITY}; policy accept;"
    else:
        names = sorted({_device(d) for d in devices})
        if not names:
            raise ValueError("devices: no interface to bind the ingress chain to")
        listed = ", ".join(f'"{d}"' for d in names)
        family = "netdev"
        chain = (f"type filter hook ingress devices = {{ {listed} }} priority {PRIORITY}; "
                 "policy accept;")
    return "\n".join([
        # Both families: a switch between ingress and the input fallback (or a crashed
        # agent's leftover of either) never leaves two rules behind.
        *drop_table(TABLE),
        f"table {family} {TABLE} {{",
        "\tchain input {",
        f"\t\t{chain}",
        # @th,72,24: the three bytes after the first of the UDP payload.
        f"\t\tudp dport {wg} @th,72,24 != 0 udp dport set {side}",
        "\t}",
        "}",
        "",
    ])
