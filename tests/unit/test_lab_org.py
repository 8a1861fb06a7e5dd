"""The benchmark organisation: deterministic, every name valid, not all-to-all."""

from __future__ import annotations

import statistics

from wiremesh.core.models import PeerInfo
from wiremesh.core.policy import compile_netmaps
from wiremesh.core.wire import check_name
from wiremesh.lab.org import org_mesh


def test_same_seed_same_org_and_another_seed_another() -> None:
    assert org_mesh(500) == org_mesh(500)
    assert org_mesh(500) != org_mesh(500, seed=8)


def test_policies_name_existing_groups_and_routes_with_valid_names() -> None:
    org = org_mesh(5000)
    groups = org.members().keys() | {"all"}
    routes = {r.name for r in org.routes}
    assert 100 <= len(groups) <= 160 and len(routes) == 2
    for p in org.policies:
        assert set(p.sources) <= groups and set(p.destinations) <= groups, p
        assert set(p.destination_routes) <= routes, p
        check_name(p.name)
    for g in groups:
        check_name(g)
    assert all(org.groups_of), "every peer belongs to a team or a service"


def test_netmaps_are_small_and_only_site_infrastructure_sees_a_whole_site() -> None:
    n = 6000
    org = org_mesh(n)
    state = org.mesh_state([PeerInfo(i, f"p{i}", f"k{i}", f"100.64.{i // 250}.{i % 250 + 1}")
                            for i in range(n)])
    sizes = {pid: len(nm.peers) for pid, nm in compile_netmaps(state).items()}
    assert statistics.median(sizes.values()) < n / 20
    members = org.members()
    infra = set().union(*(members[g] for g in members if g.startswith(("infra", "monitoring"))))
    assert max(s for pid, s in sizes.items() if pid not in infra) < n / 4
    assert max(sizes.values()) < n / 2
