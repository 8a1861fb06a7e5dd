"""Exit nodes (pure): which routes a client works on, and what must stay outside the tunnel.

An exit node is a router peer serving a route of `0.0.0.0/0`; policy decides who may use which
(a policy's `routes:` naming the route, like any route). A client uses one only when it opts
in (`wiremesh up --exit-node NAME|auto`): `auto` keeps every exit router the netmap offers and
fails over between them like any routed prefix; a name keeps only that peer. Without the opt-in
the default route is not touched at all.

With an exit node, everything leaves through the tunnel except:
- the server, relays and the underlay endpoints of the client's peers (the mesh itself must
  not depend on the tunnel it carries);
- the local networks, when asked (`--exit-node-allow-lan`).
IPv6 to anywhere else is refused (unreachable) rather than sent outside the tunnel: the
overlay and the exit nodes carry IPv4 only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from wiremesh.core.ipam import OVERLAY_NET
from wiremesh.core.wire import Netmap, RouteEntry, endpoint_host_port

EXIT_PREFIX = "0.0.0.0/0"
AUTO = "auto"


def is_exit(route: RouteEntry) -> bool:
    return route.prefix == EXIT_PREFIX


def exit_nodes(netmap: Netmap) -> dict[str, str]:
    """The exit node peers the netmap offers this peer: public key -> name."""
    return {key: netmap.peers[key].name for r in netmap.routes.values() if is_exit(r)
            for key, _ in r.routers if key in netmap.peers}


def chosen_routes(netmap: Netmap, choice: str | None) -> list[RouteEntry]:
    """The routes whose prefixes the client routes: every other route, and exit routes only as
    `choice` says (None: none; `auto`: every exit router; a name: that peer alone)."""
    out = []
    for r in netmap.routes.values():
        if not is_exit(r) or choice == AUTO:
            out.append(r)
        elif choice is not None:
            keep = tuple(x for x in r.routers
                         if (p := netmap.peers.get(x[0])) is not None and p.name == choice)
            if keep:
                out.append(RouteEntry(r.name, r.prefix, keep))
    return out


# IPv6 never goes into the tunnel (the overlay and exit nodes carry IPv4 only: it is refused
# instead), but neighbour discovery and router advertisements must stay on the links.
IPV6_LINK = ("fe80::/10", "ff00::/8")


def _host_net(host: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast:
        return None  # nothing a packet to the server or a peer is sent to
    return ipaddress.ip_network(ip)


def tunnelled(netmap: Netmap) -> list[ipaddress.IPv4Network]:
    """What a peer routes into its tunnel whichever exit node it uses: the overlay and every
    routed prefix but the exit route. Nothing in there is a way to reach a peer directly."""
    return [ipaddress.IPv4Network(OVERLAY_NET),
            *(ipaddress.IPv4Network(r.prefix) for r in netmap.routes.values() if not is_exit(r))]


def bypass(netmap: Netmap, infrastructure: Iterable[str], local_networks: Iterable[str] = (),
           allow_lan: bool = False) -> list[str]:
    """Prefixes (IPv4 and IPv6) kept out of the tunnel: `infrastructure` (the server's and
    relays' addresses), every underlay endpoint of the peers, IPv6 link-local and multicast,
    and `local_networks` when `allow_lan`. Anything inside the overlay or a routed prefix other
    than the exit's is never bypassed: it belongs in the tunnel."""
    hosts = [*infrastructure,
             *(endpoint_host_port(e)[0] for p in netmap.peers.values() for e in p.endpoints)]
    nets = {n for h in hosts if (n := _host_net(h)) is not None}
    nets |= {ipaddress.IPv6Network(n) for n in IPV6_LINK}
    if allow_lan:
        nets |= {ipaddress.ip_network(n, strict=False) for n in local_networks}
    inside = tunnelled(netmap)
    keep = [n for n in nets if n.prefixlen > 0 and not any(
        n.version == i.version and n.overlaps(i) for i in inside)]
    return [str(n) for n in sorted(keep, key=lambda n: (n.version, n))]
