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
tunnel's decrypted traffic included: in the lead's iperf3 runs (8 alternating rounds, two
cores) the mesh reached 0.935 of a plain wireguard-go pair with this rule on `input` and 0.977
with it on the underlay's ingress (0.992 with no tables at all). On ingress, only packets
arriving on the underlay devices meet it, and nothing else in the host pays for a hook.

The trade-off: ingress runs before everything else, so the rewrite now happens *before* a host
firewall looks (on `input`, the old chain ran after the filter priority and the firewall judged
these datagrams on the WireGuard port, like WireGuard's own). Now a host firewall sees STUN
answers and path probes addressed to the agent's side port, which is an ephemeral port that
differs per agent, and conntrack does not know them either: the requests left from the
WireGuard port, so an answer rewritten to another port is not the reply of that flow. A host
firewall that lets in only udp/<WireGuard port> (and established flows) therefore drops them:
WireGuard keeps working, but the agent learns no NAT mapping and finds no direct path through
probes (peers then use the addresses they know, or the relay). On such a host, run the agent
with the input-hook rule (`render(..., devices=None)`, what the agent falls back to when the
kernel refuses the netdev chain, and what PortSide(hook="input") forces).

A packet is only seen if it arrives on a listed device: an answer arriving on a device without
an address of its own (weak host model, asymmetric routes) or through loopback is not moved.
"""

from __future__ import annotations

from collections.abc import Sequence

from wiremesh.firewall.render import _IFNAME

TABLE = "wiremesh_side"
# On `input`: after `filter` (0), so host firewalls (ufw, firewalld at filter + 10) see the
# WireGuard port. On `ingress` the priority only orders it among other ingress chains.
PRIORITY = 50
# Both are replaced by every script: a switch between ingress and the input fallback (or a
# crashed agent's leftover of either) never leaves two rules behind.
FAMILIES = ("netdev", "inet")


def _port(port: int, what: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{what}: {port!r} is not a port number 1..65535")
    return port


def _device(name: str) -> str:
    if not isinstance(name, str) or not _IFNAME.fullmatch(name):
        raise ValueError(f"devices: {name!r} is not an interface name "
                         "(1-15 of A-Z a-z 0-9 _ . -)")
    return name


def _drop() -> list[str]:
    return [line for f in FAMILIES for line in (f"table {f} {TABLE}", f"delete table {f} {TABLE}")]


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
        *_drop(),
        f"table {family} {TABLE} {{",
        "\tchain input {",
        f"\t\t{chain}",
        # @th,72,24: the three bytes after the first of the UDP payload.
        f"\t\tudp dport {wg} @th,72,24 != 0 udp dport set {side}",
        "\t}",
        "}",
        "",
    ])
