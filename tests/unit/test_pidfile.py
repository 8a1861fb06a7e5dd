"""The agent's pid file: locked while the agent lives, so `wiremesh down` finds exactly it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wiremesh.agent import pidfile


def test_held_pid_file_names_the_agent_and_keeps_a_second_one_off(tmp_path: Path) -> None:
    assert pidfile.running_pid(tmp_path) is None
    with pidfile.hold(tmp_path):
        assert pidfile.running_pid(tmp_path) == os.getpid()
        with pytest.raises(pidfile.AlreadyRunning, match=f"pid {os.getpid()}"), \
                pidfile.hold(tmp_path):
            pass
    assert pidfile.running_pid(tmp_path) is None
    assert not (tmp_path / "agent.pid").exists()


def test_a_leftover_pid_file_is_not_a_running_agent(tmp_path: Path) -> None:
    (tmp_path / "agent.pid").write_text("1\n")  # pid 1 exists, but holds no lock on it
    assert pidfile.running_pid(tmp_path) is None
    with pidfile.hold(tmp_path):
        assert pidfile.running_pid(tmp_path) == os.getpid()
