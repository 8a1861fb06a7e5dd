"""bench/scale.py stopped with SIGTERM or Ctrl-C stops what it started. Python's default for SIGTERM
ended the controller without its `finally` blocks: a stalled 10,000-agent run, stopped that
way, left its server behind holding 1.2 GB for the rest of the session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from wiremesh.lab.mesh import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie stays until someone reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every running process below `root`."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and _running(p)]
        for p in kids:
            try:
                found[p] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
        frontier = kids
    return found


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
def test_a_stop_stops_the_servers_and_the_load_processes(tmp_path: Path, stop: str) -> None:
    # stderr to a file: a pipe would stay open as long as any process left behind holds it.
    with (tmp_path / "stderr").open("w") as stderr:
        bench = subprocess.Popen(
            [sys.executable, "bench/scale.py", "--agents", "30", "--workers", "2",
             "--all-to-all", "0", "--changes", "1"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    started: dict[int, str] = {}
    try:
        def load_running() -> bool:
            started.update(_descendants(bench.pid))
            servers = [c for c in started.values() if "wiremesh server" in c]
            load = [c for c in started.values() if "bench/scale.py" in c]
            return len(servers) == 1 and len(load) == 2

        wait_until(load_running, 120, "the bench's server and two load processes")
        if stop == "sigterm":
            bench.send_signal(signal.SIGTERM)
        else:  # a terminal sends SIGINT to its whole foreground process group
            os.killpg(bench.pid, signal.SIGINT)
        bench.wait(60)
        err = (tmp_path / "stderr").read_text()
        assert bench.returncode == 130, err[-2000:]
        assert "interrupted" in err and "Traceback" not in err, err[-2000:]
        left = {p: c for p, c in started.items() if _running(p)}
        assert not left, f"still running after the bench stopped: {left}"
    finally:
        for pid in [bench.pid, *started]:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        bench.wait(10)
