"""Routing over a bad network, end to end (lab/lossy_scenario.py): with every underlay link
losing 2 % and jittering 0-100 ms, no client fails over while its router is alive, and a
router that really dies is still left behind."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from rich.console import Console

from wiremesh.lab.lossy_scenario import run_lossy
from wiremesh.lab.netns import missing_requirements, new_run_id

pytestmark = pytest.mark.e2e

if missing := missing_requirements() + [t for t in ("iptables", "ip6tables")
                                         if not shutil.which(t)]:
    pytest.skip(f"lossy lab needs: {', '.join(missing)}", allow_module_level=True)


def test_a_lossy_network_makes_no_client_fail_over_but_a_dead_router_does() -> None:
    run_id = new_run_id()
    figures = run_lossy(Console(quiet=True), minutes=0.5, trials=1, run_id=run_id)
    assert figures["spurious_failovers"] == 0
    assert figures["lossy_trials"] == 1
    # The trial's clients recovered through another router (None: one never did).
    assert figures["lossy_failover_ms_p99"] is not None
    counts = figures["lossy_impairment_counts"]
    if counts is not None:  # the userspace impairment ran: it really dropped packets
        assert counts["dropped"] > 0, counts
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert run_id not in namespaces
