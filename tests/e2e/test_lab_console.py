"""The web console in Debian's chromium against a real lab (`wiremesh lab console`): SSO
login, a device login done in the browser, every page, a policy applied from the editor and
enforced by the agents, no browser console error; an auditor gets no write control and is
refused a write, a user sees only their own peers, a refused delete says why on the page."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from wiremesh.lab.browser import CHROMIUM
from wiremesh.lab.netns import missing_requirements, new_run_id
from wiremesh.lab.provider import missing_provider_requirements

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(missing_requirements()),
                       reason=f"the lab needs {', '.join(missing_requirements())}"),
    pytest.mark.skipif(bool(missing_provider_requirements()),
                       reason=f"the provider needs {', '.join(missing_provider_requirements())}"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} missing (apt chromium)"),
]


def test_console_in_a_real_browser(tmp_path: Path) -> None:
    from wiremesh.lab.console_scenario import run_console_scenario

    run_id = new_run_id()
    shots = tmp_path / "shots"
    r = run_console_scenario(Console(quiet=True), shots, run_id=run_id)
    assert r["failure"] is None, r
    assert r["login_ok"] and r["device_login_ok"], r
    assert r["pages_checked"] >= 7, r
    assert r["policy_applied_from_ui"] and r["policy_enforced"], r
    assert r["console_errors"] == 0, r
    assert r["matrix_cells"] == 3 * 2, r  # srv1, srv2, laptop: every ordered pair
    assert r["auditor_read_only"] and r["auditor_write_refused"], r
    assert r["user_sees_only_own_peers"], r
    assert r["refusal_shown"], r  # a refused delete says why on the page
    assert r["screenshots"] >= r["pages_checked"], r
    assert all(p.stat().st_size > 1000 for p in shots.rglob("*.png"))

    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert run_id not in namespaces
    procs = subprocess.run(["pgrep", "-af", run_id], capture_output=True, text=True).stdout
    assert procs == ""
