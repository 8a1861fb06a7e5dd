"""Policy files never leave the mesh inconsistent: a file without `policies:` keeps them (and
its tests run against them), integers are plain decimal, per-router metrics name routers,
and what a file keeps still holds with what it changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_policyfile import bad, lab_state

from wiremesh.core.models import MeshState
from wiremesh.core.policyfile import export, parse, plan, run_tests

EXAMPLE = (Path(__file__).resolve().parents[2] / "examples" / "policy.yaml").read_text()


def applied() -> MeshState:
    """The lab mesh with examples/policy.yaml in force."""
    state = lab_state()
    return parse(EXAMPLE, state).apply(state)


def test_a_file_without_policies_keeps_them_and_its_tests_see_them() -> None:
    state = applied()
    f = parse("groups:\n  devs: [alice]\ntests:\n"
              "  - {src: alice, dst: web1, proto: tcp, port: 443, expect: allow}\n"
              "  - {src: bob, dst: web1, proto: tcp, port: 443, expect: allow}\n", state)
    assert f.policies is None
    new = f.apply(state)
    assert new.policies == state.policies and new.routes == state.routes
    p = plan(state, new)
    assert (p.policies_added, p.policies_removed, p.policies_changed) == ((), (), ())
    assert p.groups_changed == ("devs",)
    # Judged by the kept devs-to-web: bob has left devs, alice is still in it.
    assert [f.test.src for f in run_tests(new, f.tests)] == ["bob"]
    assert parse("policies: []\n", state).apply(state).policies == ()


def test_export_of_the_kept_policies_round_trips() -> None:
    state = parse("groups:\n  devs: [bob]\n", applied()).apply(applied())
    assert parse(export(state), state).apply(state) == state


def test_a_file_cannot_drop_a_route_a_kept_policy_uses() -> None:
    issues = bad("groups:\n  devs: [alice]\nroutes: []\n", applied())
    assert issues == ["line 3: routes: route 'lab-net' is used by policy 'devs-lab', which "
                      "stays (the file has no policies section)"]


POLICY = ("policies:\n  - {name: a, sources: [all], destinations: [all], proto: tcp,\n"
          "     ports: [%s]}\n")


@pytest.mark.parametrize(("value", "expected"), [
    # YAML 1.1 read these as 1342, 8, 3, 1000 and 22: valid ports nobody wrote.
    ("22:22", "line 3: policies[0].ports[0]: bad port '22:22'"),
    ("010", "line 3: policies[0].ports[0]: 010: a leading zero is octal in YAML 1.1"),
    ("0b11", "line 3: policies[0].ports[0]: bad port '0b11'"),
    ("1_000", "line 3: policies[0].ports[0]: bad port '1_000'"),
    ("0x16", "line 3: policies[0].ports[0]: bad port '0x16'"),
    ("!!int 0x16", "line 3: bad YAML: cannot read '0x16': an integer is plain decimal"),
])
def test_ports_are_plain_decimal(value: str, expected: str) -> None:
    issues = bad(POLICY % value, lab_state())
    assert any(i.startswith(expected) for i in issues), issues


@pytest.mark.parametrize("value", ["22", "+22", '"22"', '"8000-8100"', "65535"])
def test_decimal_and_the_string_forms_are_ports(value: str) -> None:
    assert parse(POLICY % value, lab_state()).policies


@pytest.mark.parametrize(("text", "expected"), [
    ("routes:\n  - {name: n, prefix: 198.18.1.0/24, routers: all, metric: 1:40}\n",
     "line 2: routes[0].metric: Input should be a valid integer"),
    ("routes:\n  - {name: n, prefix: 198.18.1.0/24, routers: all, metric: 0100}\n",
     "line 2: routes[0].metric: 0100: a leading zero"),
    ("tests:\n  - {src: alice, dst: bob, proto: tcp, port: 0x16, expect: allow}\n",
     "line 2: tests[0].port: Input should be a valid integer"),
])
def test_every_integer_field_is_plain_decimal(text: str, expected: str) -> None:
    issues = bad(text, lab_state())
    assert any(i.startswith(expected) for i in issues), issues


ROUTE = ("groups:\n  routers: [r1, r2]\nroutes:\n"
         "  - {name: r12, prefix: 198.18.1.0/24, routers: routers, metric: %s,\n"
         "     router_metrics: {%s: %s}}\n")


def test_a_per_router_metric_names_a_router_of_the_route() -> None:
    assert parse(ROUTE % (100, "r1", 5), lab_state()).routes
    issues = bad(ROUTE % (100, "alice", 5), lab_state())
    assert issues == ["line 5: routes[0].router_metrics.alice: 'alice' is not a router of "
                      "route 'r12' (not in its router group 'routers'): a per-router metric is "
                      "for the route's routers"]
    assert bad(ROUTE % (100, "ghost", 5), lab_state()) == [
        "line 5: routes[0].router_metrics.ghost: unknown peer 'ghost'"]
    # `all` holds every peer; without a state, a group the file defines is still checked.
    assert parse("routes:\n  - {name: n, prefix: 198.18.1.0/24, routers: all,\n"
                 "     router_metrics: {alice: 5}}\n", lab_state()).routes
    assert "not a router" in bad(ROUTE % (100, "alice", 5))[0]


def test_a_file_cannot_take_a_router_with_a_metric_out_of_its_group() -> None:
    state = applied()  # lab-net: routers r1, r2; r1 has metric 50
    issues = bad("groups:\n  routers: [r2]\n", state)
    assert issues == ["line 2: groups.routers: drops 'r1', which route 'lab-net' gives a "
                      "per-router metric: take it out of the route's router_metrics first"]
    assert parse("groups:\n  routers: [r1]\n", state).apply(state)
    # With the route in the file too, the file says what it wants: checked as a whole.
    assert parse(EXAMPLE.replace("routers: [r1, r2]", "routers: [r2]")
                 .replace("router_metrics: {r1: 50}", "router_metrics: {r2: 50}"), state)


@pytest.mark.parametrize("metric", [0, 65536, 1_000_000])
def test_route_and_per_router_metrics_have_the_same_bounds(metric: int) -> None:
    f = parse(ROUTE % (metric, "r1", metric), lab_state())
    assert f.routes is not None and f.routes[0].metric == metric
    assert f.routes[0].router_metrics == (("r1", metric),)


def test_metrics_past_the_wire_bound_are_refused_alike() -> None:
    issues = bad(ROUTE % (1_000_001, "r1", 1_000_001), lab_state())
    assert [i.split(":")[1] for i in issues] == [" routes[0].metric",
                                                 " routes[0].router_metrics.r1"]
    assert all("less than or equal to 1000000" in i for i in issues)

