"""Policy files: every kind of bad input names its line and field; export round-trips; tests
and plans report what they should."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy_compiler import states

from tests.conftest import billion_laughs
from wiremesh.core.models import MeshState, PeerInfo, Policy, PortRange
from wiremesh.core.policy import PolicyCompiler, compile_netmaps
from wiremesh.core.policyfile import PolicyFileError, PolicyTest, export, parse, plan, run_tests

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"
NAMES = ["alice", "bob", "web1", "db1", "r1", "r2"]


def lab_state() -> MeshState:
    peers = {i: PeerInfo(i, n, f"key{i}", f"100.64.0.{i}") for i, n in enumerate(NAMES, 1)}
    return MeshState(peers, {"all": frozenset(peers), "auto": frozenset({1})})


def bad(text: str, state: MeshState | None = None) -> list[str]:
    with pytest.raises(PolicyFileError) as e:
        parse(textwrap.dedent(text), state, source="p.yaml")
    assert str(e.value).startswith("p.yaml: line ")
    return [str(i) for i in e.value.issues]


GOOD_HEAD = """\
groups:
  devs: [alice, bob]
  web: [web1]
policies:
"""


def test_example_file_parses_applies_and_its_tests_pass() -> None:
    state = lab_state()
    f = parse(EXAMPLE.read_text(), state, source=str(EXAMPLE))
    new = f.apply(state)
    assert run_tests(new, f.tests) == []
    assert {p.name for p in new.policies} >= {"devs-to-web", "web-to-db"}
    assert new.groups["auto"] == frozenset({1})  # groups not in the file are kept


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD_HEAD + "  - {name: a, sources: [devs], destinations: [nope]}\n",
     "line 5: policies[0].destinations[0]: unknown group 'nope'"),
    (GOOD_HEAD + "  - name: a\n    sources: [ghost]\n    destinations: [web]\n",
     "line 6: policies[0].sources[0]: unknown group 'ghost'"),
    ("groups:\n  devs: [alice, mallory]\n",
     "line 2: groups.devs[1]: unknown peer 'mallory'"),
    (GOOD_HEAD + "  - {name: a, sources: [devs], destinations: [web], proto: tcp,\n"
                 "     ports: [22, 70000]}\n",
     "line 6: policies[0].ports[1]: bad port range 70000-70000: need 1 <= start <= end <= 65535"),
    (GOOD_HEAD + "  - name: a\n    sources: [devs]\n    destinations: [web]\n    proto: tcp\n"
                 "    ports: [\"90-80\"]\n",
     "line 9: policies[0].ports[0]: bad port range 90-80: need 1 <= start <= end <= 65535"),
    (GOOD_HEAD + "  - {name: a, sources: [devs], destinations: [web], proto: tcp, ports: [ssh]}\n",
     "line 5: policies[0].ports[0]: bad port 'ssh': expected N or N-M with 1..65535"),
    (GOOD_HEAD + "  - name: a\n    sources: [devs]\n    destinations: [web]\n    proto: gre\n",
     "line 8: policies[0].proto: Input should be 'all', 'tcp', 'udp' or 'icmp'"),
    (GOOD_HEAD + "  - name: a\n    sources: [devs]\n    destinations: [web]\n    proto: icmp\n"
                 "    ports: [22]\n",
     "line 9: policies[0].ports: ports make no sense with proto icmp: use tcp or udp"),
    (GOOD_HEAD + "  - {name: a, sources: [devs], destinations: [web], ports: [22]}\n",
     "line 5: policies[0].ports: ports make no sense with proto all: use tcp or udp"),
    (GOOD_HEAD + "  - {name: a, sources: [devs], destinations: [web]}\n"
                 "  - {name: a, sources: [web], destinations: [devs]}\n",
     "line 6: policies[1].name: duplicate policy name 'a'"),
    ("groups:\n  devs: [alice]\n  devs: [bob]\n", "line 3: groups.devs: duplicate key 'devs'"),
    ("groups:\n  all: [alice]\n",
     "line 2: groups.all: group 'all' is built in (every peer); it cannot be defined"),
    (GOOD_HEAD + "  - {name: a, sources: [devs], destinations: [web], colour: red}\n",
     "line 5: policies[0].colour: Extra inputs are not permitted"),
    (GOOD_HEAD + "  - {name: a, sources: [devs]}\n",
     "line 5: policies[0]: a policy needs destinations or routes"),
    (GOOD_HEAD + "  - {name: a, sources: [devs], destinations: [web], enabled: maybe}\n",
     "line 5: policies[0].enabled: Input should be a valid boolean"),
    (GOOD_HEAD + "  - {name: a, sources: [devs], routes: [nowhere]}\n",
     "line 5: policies[0].routes[0]: unknown route 'nowhere'"),
    ("routes:\n  - {name: n, prefix: 198.18.1.1/24, routers: devs}\n",
     "line 2: routes[0].prefix: bad prefix '198.18.1.1/24': 198.18.1.1/24 has host bits set"),
    ("routes:\n  - {name: n, prefix: 198.18.1.0/24, routers: nobody}\n",
     "line 2: routes[0].routers: unknown group 'nobody'"),
    ("routes:\n  - {name: n, prefix: 198.18.1.0/24, routers: all}\n"
     "  - {name: n, prefix: 198.18.2.0/24, routers: all}\n",
     "line 3: routes[1].name: duplicate route name 'n'"),
    ("tests:\n  - {src: alice, dst: zed, proto: tcp, port: 22, expect: allow}\n",
     "line 2: tests[0].dst: unknown peer 'zed'"),
    ("tests:\n  - {src: alice, dst: bob, proto: tcp, expect: allow}\n",
     "line 2: tests[0]: proto tcp needs a port"),
    ("tests:\n  - {src: alice, dst: bob, proto: icmp, port: 1, expect: allow}\n",
     "line 2: tests[0]: a port makes no sense with proto icmp"),
    ("tests:\n  - {src: alice, dst: bob, proto: tcp, port: 1, expect: maybe}\n",
     "line 2: tests[0].expect: Input should be 'allow' or 'deny'"),
    ("groups: [1, 2\n", "bad YAML"),
    ("- just a list\n", "line 1: expected a mapping"),
])
def test_invalid_files_name_line_and_field(text: str, expected: str) -> None:
    issues = bad(text, lab_state())
    assert any(expected in i for i in issues), issues


def test_json_errors_name_lines_too() -> None:
    text = '{\n  "groups": {"devs": ["alice"]},\n  "policies": [\n' \
           '    {"name": "a", "sources": ["devs"], "destinations": ["nope"]}\n  ]\n}\n'
    assert bad(text, lab_state()) == ["line 4: policies[0].destinations[0]: unknown group 'nope'"]
    assert bad('{"groups": {"devs": ["alice"],}\n', lab_state())[0].startswith("line 1: bad")


def test_all_issues_are_reported_and_one_line_for_a_cli() -> None:
    text = GOOD_HEAD + "  - {name: a, sources: [x], destinations: [y]}\n"
    with pytest.raises(PolicyFileError) as e:
        parse(text, lab_state(), source="p.yaml")
    assert len(e.value.issues) == 2
    assert "\n" not in str(e.value) and str(e.value).endswith("(and 1 more)")


def test_without_a_state_only_file_internal_names_are_checked() -> None:
    f = parse("groups: {devs: [anyone]}\npolicies:\n"
              "  - {name: a, sources: [devs], destinations: [all], proto: udp, ports: [53]}\n")
    assert f.policies == (Policy("a", ("devs",), ("all",), "udp", (PortRange(53, 53),)),)
    assert f.routes is None


def test_json_file_is_accepted() -> None:
    doc = {"groups": {"devs": ["alice"]}, "policies": [
        {"name": "a", "sources": ["devs"], "destinations": ["all"], "proto": "tcp",
         "ports": [22, "8000-8100"]}]}
    f = parse(json.dumps(doc, indent=2), lab_state())
    assert f.policies[0].ports == (PortRange(22, 22), PortRange(8000, 8100))


def test_run_tests_reports_failures_with_reasons() -> None:
    state = parse(EXAMPLE.read_text(), lab_state()).apply(lab_state())
    tests = [PolicyTest("alice", "db1", "tcp", 5432, "allow", line=7),
             PolicyTest("alice", "web1", "tcp", 443, "allow"),
             PolicyTest("alice", "ghost", "tcp", 1, "deny")]
    failures = run_tests(state, tests)
    assert [f.test for f in failures] == [tests[0], tests[2]]
    assert failures[0].message.startswith("line 7: alice -> db1 tcp/5432 expect allow, got deny")
    assert "db1 is in none of its destination groups [web]" in failures[0].message
    assert "no peer named 'ghost'" in failures[1].message


def valid_for_a_file(state: MeshState) -> MeshState:
    """The random state, with the references a policy file refuses replaced by valid ones."""
    groups = {g: m & state.peers.keys() for g, m in state.groups.items()}
    known = {*groups, "all"}
    def routers(group: str) -> set[str]:  # per-router metrics are for a route's routers
        members = state.peers.keys() if group == "all" else groups[group]
        return {state.peers[pid].name for pid in members}

    routes = []
    for r in state.routes:
        group = r.router_group if r.router_group in known else "all"
        routes.append(dataclasses.replace(r, router_group=group, router_metrics=tuple(
            x for x in r.router_metrics if x[0] in routers(group))))
    route_names = {r.name for r in routes}
    policies = []
    for p in state.policies:
        sources = tuple(g for g in p.sources if g in known) or ("all",)
        dests = tuple(g for g in p.destinations if g in known)
        via = tuple(r for r in p.destination_routes if r in route_names)
        policies.append(dataclasses.replace(p, sources=sources, destinations=dests or (
            () if via else ("all",)), destination_routes=via))
    return MeshState(state.peers, groups, tuple(policies), tuple(routes))


@settings(max_examples=100, deadline=None)
@given(states().map(valid_for_a_file))
def test_export_round_trips(state: MeshState) -> None:
    assert parse(export(state), state).apply(state) == state


def test_plan_lists_changes_and_touched_peers() -> None:
    old = lab_state()
    new = parse(EXAMPLE.read_text(), old).apply(old)
    p = plan(old, new)
    assert "devs-to-web" in p.policies_added and p.groups_added == ("db", "devs", "routers", "web")
    assert p.routes_added == ("lab-net",)
    assert {c.name for c in p.peers} == set(NAMES)
    assert plan(new, new).empty
    edited = MeshState(new.peers, new.groups, tuple(
        Policy(q.name, q.sources, q.destinations, q.protocol, (PortRange(5433, 5433),))
        if q.name == "web-to-db" else q for q in new.policies), new.routes)
    p2 = plan(new, edited)
    assert p2.policies_changed == ("web-to-db",)
    assert [(c.name, c.rules_added, c.rules_removed, c.peers_added) for c in p2.peers] == [
        ("db1", 1, 1, 0)]
    assert "~ policy web-to-db" in p2.lines()


def test_a_plan_on_a_borrowed_compiler_is_the_same_and_leaves_it_as_it_was() -> None:
    old = lab_state()
    new = parse(EXAMPLE.read_text(), old).apply(old)
    compiler = PolicyCompiler(old)
    held = dict(compiler.netmaps)
    assert plan(old, new, compiler) == plan(old, new)
    assert dict(compiler.netmaps) == held
    # Moved on from there, it is still the compiler of the mesh it held.
    compiler.update(new)
    assert dict(compiler.netmaps) == compile_netmaps(new)


@pytest.mark.parametrize(("text", "expected"), [
    (billion_laughs(9), "line 6: refused: more than 100000 values once YAML aliases are "
                        "expanded (the limit)"),
    ("groups: &g {devs: *g}\n", "line 1: refused: alias *g refers to a node that contains it"),
    ("groups: " + "[" * 70 + "]" * 70 + "\n", "refused: nested deeper than 64 levels"),
    # Shallow in the file, deep once expanded: each anchor nests the one before.
    ("a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 70)),
     "refused: nested deeper than 64 levels (the limit)"),
    ("groups: {}\n" + "#" * (1 << 20), "the file is 1048587 bytes; the limit is 1048576"),
])
def test_hostile_files_are_refused_naming_the_limit(text: str, expected: str) -> None:
    with pytest.raises(PolicyFileError) as e:
        parse(text, lab_state(), source="p.yaml")
    assert expected in str(e.value)


@pytest.mark.parametrize(("text", "expected"), [
    # YAML resolves these scalars to an int or a date their value does not fit: ValueError.
    (GOOD_HEAD + "  - {name: a, sources: [devs], destinations: [web], proto: tcp,\n"
                 "     ports: [" + "9" * 5000 + "]}\n",
     "line 6: bad YAML: cannot read '9999"),
    (GOOD_HEAD + "  - {name: 2001-13-45, sources: [devs], destinations: [web]}\n",
     "line 5: bad YAML: cannot read '2001-13-45': month must be in 1..12"),
    ('{"policies":\t[' + "9" * 5000 + "]}", "bad JSON: Exceeds the limit"),
    # Group names are names like any other: '' or 'a b' could be stored but never addressed.
    ("groups:\n  '': [alice]\n", "line 2: groups.: bad name ''"),
    ("groups:\n  a b: [alice]\n", "line 2: groups.a b: bad name 'a b'"),
    ("groups:\n  devs: [alice, 7]\n", "line 2: groups.devs[1]: Input should be a valid string"),
    ("groups: {}\n\udcff", "character 12 is not Unicode text"),
])
def test_values_python_cannot_hold_are_issues_not_exceptions(text: str, expected: str) -> None:
    with pytest.raises(PolicyFileError) as e:
        parse(text, lab_state(), source="p.yaml")
    assert expected in str(e.value), e.value.lines()


@settings(max_examples=300)
@given(st.text(st.sampled_from(list("{}[]:,-&*!|>'\"#%@ \n\tab01.~?")), max_size=120)
       | st.text(max_size=120))
def test_any_text_parses_or_is_a_policy_file_error(text: str) -> None:
    with contextlib.suppress(PolicyFileError):
        parse(text, lab_state())


@pytest.mark.parametrize(("prefix", "expected"), [
    # Agents route, filter and masquerade IPv4 only (an IPv6 prefix broke the router's nft
    # rendering); a peer's own /32 given to a router would take that peer's traffic.
    ("fd00::/64", "fd00::/64: a route is an IPv4 network"),
    ("100.64.0.5/32", "100.64.0.5/32 is inside the overlay 100.64.0.0/10"),
    ("100.64.0.0/10", "is inside the overlay"),
    ("127.0.0.0/8", "loopback, link-local or multicast"),
    ("224.0.0.0/4", "loopback, link-local or multicast"),
])
def test_routes_a_router_cannot_serve_are_refused(prefix: str, expected: str) -> None:
    issues = bad(f"routes:\n  - {{name: n, prefix: '{prefix}', routers: all}}\n", lab_state())
    assert len(issues) == 1 and issues[0].startswith("line 2: routes[0].prefix: "), issues
    assert expected in issues[0]


@pytest.mark.parametrize("prefix", ["0.0.0.0/0", "64.0.0.0/2", "198.18.1.0/24"])
def test_exit_and_networks_around_the_overlay_are_routes(prefix: str) -> None:
    f = parse(f"routes:\n  - {{name: n, prefix: '{prefix}', routers: all}}\n", lab_state())
    assert f.routes is not None and f.routes[0].prefix == prefix


def test_anchors_and_aliases_within_the_limits_still_work() -> None:
    f = parse("groups:\n  devs: &devs [alice, bob]\n  ops: *devs\n", lab_state())
    assert f.groups == {"devs": ("alice", "bob"), "ops": ("alice", "bob")}
