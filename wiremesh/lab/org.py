"""A realistic organisation's mesh for benchmarks: people in teams, servers in services, and
policies between teams and services (not all-to-all).

Pure and deterministic for a seed; `bench/policy_compile.py` and `bench/scale.py` share it so
their figures are about the same shape. Peers are named by index (0 .. n-1); the caller decides
what a peer is (a `PeerInfo`, an enrolling agent).

The shape for n peers (about 240 groups and 650 policies at 10,000 peers, ten times that at
100,000: an organisation grows by adding teams, services and sites, not by growing each one):

- 60% of peers are people's devices in teams of 10-90 (50 on average), 40% are servers in
  services of 8-72 (40 on average); one in ten is also in a second team or service.
- Each team reaches 2-6 services anywhere (some services are more popular than others), each
  service calls 0-3 other services, one team in twenty works with another team both ways.
- Teams and services live in sites of about 2,000 peers (group `site<k>`). Each site has its
  infrastructure: `infra<k>` (3 servers: DNS, NTP, logs) reachable from the site and
  `monitoring<k>` (2 servers) reaching the site, one bastion (group `bastions`) that `admins`
  (10 people) reach, and a routed network `net<k>` (198.18.k.0/24, two routers in
  `routers<k>`) that one team in five reaches. Infrastructure is per site because a server
  reached by the whole mesh would hold a WireGuard peer for every machine of the organisation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from wiremesh.core.models import MeshState, PeerInfo, Policy, PortRange, Route

SITE_PEERS = 2000
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


def _port(p: int) -> tuple[PortRange, ...]:
    return (PortRange(p, p),)


def org_mesh(n_peers: int, seed: int = 7) -> Org:
    rnd = random.Random(seed)
    n_sites = min(256, max(1, round(n_peers / SITE_PEERS)))
    groups_of: list[list[str]] = [[] for _ in range(n_peers)]
    people = [i for i in range(n_peers) if rnd.random() < 0.6]
    taken = set(people)
    servers = [i for i in range(n_peers) if i not in taken]
    site_servers: list[list[int]] = [[] for _ in range(n_sites)]
    site_people: list[list[int]] = [[] for _ in range(n_sites)]

    def assign(prefix: str, who: list[int], mean: int, by_site: list[list[int]]) -> list[str]:
        names = [f"{prefix}{k}" for k in range(max(1, round(len(who) / mean)))]
        site = {g: rnd.randrange(n_sites) for g in names}
        weights = [rnd.uniform(0.2, 1.8) for _ in names]
        for i, g in zip(who, rnd.choices(names, weights, k=len(who)), strict=True):
            mine = [g]
            if rnd.random() < 0.1 and (other := rnd.choice(names)) != g:
                mine.append(other)
            groups_of[i] += mine
            for s in sorted({site[m] for m in mine}):
                groups_of[i].append(f"site{s}")
            by_site[site[g]].append(i)
        return names

    teams = assign("team", people, 50, site_people) if people else []
    services = assign("svc", servers, 40, site_servers) if servers else []

    policies: list[Policy] = []
    routes: list[Route] = []
    for s in range(n_sites):
        hosts = site_servers[s] or site_people[s]
        if not hosts:
            continue
        for g, k in ((f"infra{s}", 3), (f"monitoring{s}", 2), ("bastions", 1),
                     (f"routers{s}", 2)):
            for i in rnd.sample(hosts, min(k, len(hosts))):
                groups_of[i].append(g)
        site = f"site{s}"
        policies += [
            Policy(f"{site}-dns", (site,), (f"infra{s}",), "udp", _port(53)),
            Policy(f"{site}-ntp", (site,), (f"infra{s}",), "udp", _port(123)),
            Policy(f"{site}-logs", (site,), (f"infra{s}",), "tcp", _port(514)),
            Policy(f"monitoring{s}-{site}", (f"monitoring{s}",), (site,), "tcp", _port(9100)),
        ]
        routes.append(Route(f"net{s}", f"198.18.{s}.0/24", f"routers{s}"))
    for i in rnd.sample(people or servers, min(10, len(people or servers))):
        groups_of[i].append("admins")
    policies.append(Policy("admins-bastions", ("admins",), ("bastions",), "tcp", _port(22)))

    popularity = [rnd.uniform(0.5, 2.0) for _ in services]
    for t in teams:
        if services:
            for svc in sorted(set(rnd.choices(services, popularity, k=rnd.randint(2, 6)))):
                policies.append(Policy(f"{t}-{svc}", (t,), (svc,), "tcp", _ports(rnd)))
        if rnd.random() < 0.05 and (other := rnd.choice(teams)) != t:
            policies.append(Policy(f"{t}-{other}", (t,), (other,), "all", bidirectional=True))
        if rnd.random() < 0.2 and routes:
            net = rnd.choice(routes).name
            wide = rnd.random() < 0.5
            policies.append(Policy(f"{t}-{net}", (t,), (), "all" if wide else "tcp",
                                   () if wide else _ports(rnd), destination_routes=(net,)))
    for svc in services:
        for d in sorted(set(rnd.sample(services, min(len(services), rnd.randint(0, 3))))):
            if d != svc:
                policies.append(Policy(f"{svc}-{d}", (svc,), (d,),
                                       "udp" if rnd.random() < 0.3 else "tcp", _ports(rnd)))
    return Org(tuple(tuple(g) for g in groups_of), tuple(policies), tuple(routes))
