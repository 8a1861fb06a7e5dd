"""The policy lab scenario end to end: every probe agrees with the matrix, before and after a
live policy change, and the lab leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from wiremesh.lab.netns import missing_requirements, new_run_id
from wiremesh.lab.policy_scenario import run_policy_scenario

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(missing_requirements()),
                       reason=f"the lab needs {', '.join(missing_requirements())}"),
]


def test_policy_scenario_matches_the_matrix_before_and_after_a_live_change() -> None:
    run_id = new_run_id()
    result = run_policy_scenario(Console(quiet=True), run_id=run_id)
    assert result["violations"] == 0, result
    assert result["probes"] >= 100, result
    for r in ("round1", "round2"):
        assert result[r]["violations"] == 0, result
        assert result[r]["allowed_ok"] > 0 and result[r]["denied_blocked"] > 0, result
    # The change opens and closes ports, so the rounds see different allowed counts.
    assert result["round1"]["allowed_ok"] != result["round2"]["allowed_ok"], result
    assert result["propagation_ms"] is not None, result

    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert run_id not in namespaces
    assert not list(Path("/var/run/wireguard").glob(f"{run_id}*"))
    if not os.environ.get("WIREMESH_LAB_KEEP_LOGS"):
        assert not Path(f"/tmp/{run_id}").exists()
    procs = subprocess.run(["pgrep", "-af", run_id], capture_output=True, text=True).stdout
    assert procs == ""
