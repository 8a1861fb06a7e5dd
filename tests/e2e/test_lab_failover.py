"""The failover scenario end to end: real server, agents, routers and an outsider; the active
router is killed (server up), then its link goes down (server stopped), and each time the
clients' echoes come back through another router while the outsider never gets an answer."""

from __future__ import annotations

import subprocess

import pytest
from rich.console import Console

from wiremesh.lab.echo import Reply
from wiremesh.lab.failover_scenario import ROUTER_METRICS, longest_gap_ms, run_failover
from wiremesh.lab.netns import missing_requirements, new_run_id

pytestmark = pytest.mark.e2e

if missing := missing_requirements():
    pytest.skip(f"lab needs: {', '.join(missing)}", allow_module_level=True)


def test_longest_gap_counts_only_replies_in_the_window() -> None:
    replies = [Reply(i, t, t, "x") for i, t in enumerate((0.0, 0.01, 0.5, 0.51, 3.0))]
    assert longest_gap_ms(replies, 0.0, 1.0) == 490.0
    assert longest_gap_ms([], 0.0, 1.0) == 1000.0


def test_traffic_moves_to_another_router_and_the_outsider_never_gets_in() -> None:
    run_id = new_run_id()
    figures, trials = run_failover(2, Console(quiet=True), run_id=run_id)
    assert [(t.method, t.server_up) for t in trials] == [("kill", True), ("link", False)]
    for t in trials:
        assert t.from_router in ROUTER_METRICS, t
        assert t.to_router in ROUTER_METRICS and t.to_router != t.from_router, t
        assert all(v is not None for v in t.interruption_ms.values()), t
    assert figures["trials_without_recovery"] == 0
    assert figures["server_down_trials"] == 1
    # The outsider really pushed packets into the routers, and none came back.
    assert figures["unauthorized_sent"] > 0
    assert figures["unauthorized_dropped_at_routers"] > 0
    assert figures["unauthorized_reached"] == 0
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert run_id not in namespaces
