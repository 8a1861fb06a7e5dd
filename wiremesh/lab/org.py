"""A realistic organisation's mesh for benchmarks: people in teams, servers in services, and
policies between teams and services (not all-to-all).

Pure and deterministic for a seed; `bench/policy_compile.py` and `bench/scale.py` share it so
their figures are about the same shape. Peers are named by index (0 .. n-1); the caller decides
what a peer is (a `PeerInfo`, an enrolling agent).

The shape for n peers (about 250 groups and 800 policies at 10,000 peers, ten times that at
100,000: an organisation grows by adding teams and services, not by growing every team):

- 60% of peers are people's devices in teams of 10-90 (50 on average), 40% are servers in
  services of 8-72 (40 on average); one in ten is also in a second team or service.
- Each team reaches 2-6 services (some services are more popular than others), each service
  calls 0-3 other services, one team in twenty works with another team both ways, one in
  five reaches a routed network (n/2000 routes, two router servers each).
- Infrastructure everyone uses: `dns` (4 servers), `ntp` (2) and `logs` (3) are reachable from
  `all`; `admins` (10 people) and `monitoring` (3 servers) reach `all`. These make a handful of
  netmaps hold every peer, as they do in real meshes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from wiremesh.core.models import MeshState, PeerInfo, Policy, PortRange, Proto, Route

# Infrastructure groups: name -> (members, protocol, port).
HUBS_FROM_ALL: dict[str, tuple[int, Proto, int]] = {
    "dns": (4, "udp", 53), "ntp": (2, "udp", 123), "logs": (3, "tcp", 514)}
HUBS_TO_ALL: dict[str, tuple[int, Proto, int]] = {
    "admins": (10, "tcp", 22), "monitoring": (3, "tcp", 9100)}
_SERVICE_PORTS = (22, 80, 443, 3000, 5432, 6379, 8080, 8443, 9000, 9092)


@dataclass(frozen=True)
class Org:
    groups_of: tuple[tuple[str, ...], ...]  # by peer index
    policies: tuple[Policy, ...]
    routes: tuple[Route, ...]

    def members(self) -> dict[str, frozenset[int]]:
        """Each group's members, by peer index."""
        out: dict[str, set[int]] = {}
        for i, groups in enumerate(self.groups_of):
            for g in groups:
                out.setdefault(g, set()).add(i)
        return {g: frozenset(m) for g, m in out.items()}

    def mesh_state(self, peers: Sequence[PeerInfo]) -> MeshState:
        """The mesh with `peers[i]` as the peer at index i."""
        ids = [p.id for p in peers]
        return MeshState(
            peers={p.id: p for p in peers},
            groups={g: frozenset(ids[i] for i in m) for g, m in self.members().items()},
            policies=self.policies, routes=self.routes)


def _ports(rnd: random.Random) -> tuple[PortRange, ...]:
    if rnd.random() < 0.2:
        a = rnd.randint(1024, 60000)
        return (PortRange(a, a + rnd.randint(1, 500)),)
    return tuple(PortRange(p, p) for p in sorted(rnd.sample(_SERVICE_PORTS, rnd.randint(1, 3))))


def org_mesh(n_peers: int, seed: int = 7) -> Org:
    rnd = random.Random(seed)
    people = [i for i in range(n_peers) if rnd.random() < 0.6]
    taken = set(people)
    servers = [i for i in range(n_peers) if i not in taken]
    groups_of: list[list[str]] = [[] for _ in range(n_peers)]

    def assign(prefix: str, who: list[int], mean: int) -> list[str]:
        names = [f"{prefix}{k}" for k in range(max(1, round(len(who) / mean)))]
        weights = [rnd.uniform(0.2, 1.8) for _ in names]
        for i, g in zip(who, rnd.choices(names, weights, k=len(who)), strict=True):
            groups_of[i].append(g)
            if rnd.random() < 0.1:
                other = rnd.choice(names)
                if other != g:
                    groups_of[i].append(other)
        return names

    teams = assign("team", people, 50) if people else []
    services = assign("svc", servers, 40) if servers else []
    policies: list[Policy] = []
    hosts = servers or people
    for hub, (size, proto, port) in HUBS_FROM_ALL.items():
        for i in rnd.sample(hosts, min(size, len(hosts))):
            groups_of[i].append(hub)
        policies.append(Policy(f"all-{hub}", ("all",), (hub,), proto, (PortRange(port, port),)))
    for hub, (size, proto, port) in HUBS_TO_ALL.items():
        pool = people if hub == "admins" and people else hosts
        for i in rnd.sample(pool, min(size, len(pool))):
            groups_of[i].append(hub)
        policies.append(Policy(f"{hub}-all", (hub,), ("all",), proto, (PortRange(port, port),)))

    n_routes = min(256, max(2, n_peers // 2000))
    routes: list[Route] = []
    for r in range(n_routes):
        routers = rnd.sample(hosts, min(2, len(hosts)))
        for i in routers:
            groups_of[i].append(f"routers{r}")
        routes.append(Route(f"net{r}", f"198.18.{r}.0/24", f"routers{r}"))

    popularity = [rnd.uniform(0.5, 2.0) for _ in services]
    for t in teams:
        if services:
            for s in sorted(set(rnd.choices(services, popularity, k=rnd.randint(2, 6)))):
                policies.append(Policy(f"{t}-{s}", (t,), (s,), "tcp", _ports(rnd)))
        if rnd.random() < 0.05:
            other = rnd.choice(teams)
            if other != t:
                policies.append(Policy(f"{t}-{other}", (t,), (other,), "all",
                                       bidirectional=True))
        if rnd.random() < 0.2:
            net = rnd.randrange(n_routes)
            wide = rnd.random() < 0.5
            policies.append(Policy(f"{t}-net{net}", (t,), (), "all" if wide else "tcp",
                                   () if wide else _ports(rnd),
                                   destination_routes=(f"net{net}",)))
    for s in services:
        for d in sorted(set(rnd.sample(services, min(len(services), rnd.randint(0, 3))))):
            if d != s:
                policies.append(Policy(f"{s}-{d}", (s,), (d,),
                                       "udp" if rnd.random() < 0.3 else "tcp", _ports(rnd)))
    return Org(tuple(tuple(g) for g in groups_of), tuple(policies), tuple(routes))
