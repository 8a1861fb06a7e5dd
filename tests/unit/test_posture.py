"""Posture: a source peer failing a policy's posture is out of that policy's sources (and
only that policy's), explain says so, and the policy file carries the requirement."""

from __future__ import annotations

import dataclasses

import pytest
from test_policy_compiler import mesh

from wiremesh.core.explain import explain
from wiremesh.core.models import MeshChange, MeshState, Policy
from wiremesh.core.policy import PolicyCompiler, compile_netmaps
from wiremesh.core.policyfile import PolicyFileError, export, parse
from wiremesh.core.posture import Posture

LINUX_02 = Posture(min_agent_version="0.2.0", os_families=("linux",))


def reported(state: MeshState, pid: int, version: str, os_family: str) -> MeshState:
    p = dataclasses.replace(state.peers[pid], agent_version=version, os_family=os_family)
    return dataclasses.replace(state, peers={**state.peers, pid: p})


def sources_at(state: MeshState, dst: int, nms=None) -> set[str]:
    nms = nms or compile_netmaps(state)
    return {r.src for r in nms[dst].inbound}


def test_a_failing_peer_is_out_of_that_policys_sources_only() -> None:
    strict = Policy("strict", ("devs",), ("servers",), posture=LINUX_02)
    loose = Policy("loose", ("ops",), ("servers",))
    state = mesh(4, {"devs": {1, 2}, "ops": {2}, "servers": {4}}, [strict, loose])
    state = reported(reported(state, 1, "0.2.1", "linux"), 2, "0.1.9", "linux")
    ip = {i: state.peers[i].overlay_ip for i in state.peers}
    # p1 passes; p2 is too old for `strict` but still a source of `loose`.
    assert sources_at(state, 4) == {ip[1], ip[2]}
    assert not any(r.src == ip[2] for r in compile_netmaps(dataclasses.replace(
        state, policies=(strict,)))[4].inbound)
    ex = explain(dataclasses.replace(state, policies=(strict,)), "p2", "p4")
    assert not ex.allowed and ex.verdicts[0].verdict == "posture"
    assert "0.1.9, older than 0.2.0" in ex.verdicts[0].reason
    assert explain(state, "p1", "p4").allowed_by == ("strict",)


def test_unreported_or_wrong_os_fails_and_a_new_report_lets_the_peer_in() -> None:
    pol = Policy("strict", ("all",), ("servers",), posture=LINUX_02)
    state = reported(mesh(3, {"servers": {3}}, [pol]), 2, "0.3.0", "windows")
    c = PolicyCompiler(state)
    ip = {i: state.peers[i].overlay_ip for i in state.peers}
    assert sources_at(state, 3, c.netmaps) == set()
    assert "reports no agent version" in explain(state, "p1", "p3").verdicts[0].reason
    assert "runs on windows, not linux" in explain(state, "p2", "p3").verdicts[0].reason
    # The agent upgraded: an ordinary snapshot update moves it into the sources.
    later = reported(state, 1, "0.2.0", "linux")
    assert 3 in c.update(later)
    assert sources_at(later, 3, c.netmaps) == {ip[1]}
    assert c.netmaps == compile_netmaps(later)


def test_reports_and_memberships_move_peers_in_and_out_change_by_change() -> None:
    """What a refresh hands the compiler (MeshChange): each step against a full compile."""
    pol = Policy("strict", ("devs",), ("servers",), posture=LINUX_02)
    state = reported(mesh(4, {"devs": {1}, "servers": {4}}, [pol]), 2, "0.3.0", "linux")
    c = PolicyCompiler(state)
    ip = {i: state.peers[i].overlay_ip for i in state.peers}
    steps = [
        # p1 upgrades: in.
        MeshChange(peers={1: reported(state, 1, "0.2.0", "linux").peers[1]}),
        # p2 (passing) joins devs, and p3 with it (unreported), in one change.
        MeshChange(groups={"devs": frozenset({1, 2, 3})}),
        # p1 moves to windows: out; a new passing peer joins devs as it enrols.
        MeshChange(peers={1: reported(state, 1, "0.2.0", "windows").peers[1],
                          5: dataclasses.replace(state.peers[2], id=5, name="p5",
                                                 public_key="key5", overlay_ip="100.64.0.5")},
                   groups={"devs": frozenset({1, 2, 3, 5})}),
        # p2 leaves the mesh.
        MeshChange(peers={2: None}),
    ]
    want = [{ip[1]}, {ip[1], ip[2]}, {ip[2], "100.64.0.5"}, {"100.64.0.5"}]
    for step, sources in zip(steps, want, strict=True):
        c.apply(step)
        assert sources_at(c.state(), 4, c.netmaps) == sources
        assert c.netmaps == compile_netmaps(c.state())
    # The posture lifted: every member of devs is a source again.
    c.apply(MeshChange(policies={"strict": dataclasses.replace(pol, posture=None)}))
    assert sources_at(c.state(), 4, c.netmaps) == {ip[1], ip[3], "100.64.0.5"}
    assert c.state().groups.keys() == {"devs", "servers", "all"}


def test_policy_file_round_trips_posture_and_names_bad_values() -> None:
    text = """
policies:
  - name: strict
    sources: [all]
    destinations: [all]
    posture: {min_agent_version: 0.2.0, os: [linux, macos]}
"""
    f = parse(text)
    assert f.policies[0].posture == Posture("0.2.0", ("linux", "macos"))
    state = f.apply(MeshState())
    assert parse(export(state)).policies == f.policies
    with pytest.raises(PolicyFileError, match="min_agent_version"):
        parse(text.replace("0.2.0", "new"))
    with pytest.raises(PolicyFileError, match="os"):
        parse(text.replace("macos", "beos"))
