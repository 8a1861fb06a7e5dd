"""The server's collector: frozen objects are out of the collector's ordinary passes, a full
pass frees the cycles among them, and it runs when the mesh is quiet, or at the latest after
twice its period however busy the mesh is."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from wiremesh.server import collector as collector_module
from wiremesh.server.collector import Collector


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_a_full_pass_frees_a_cycle_among_frozen_objects() -> None:
    c = Cycle()
    ref = weakref.ref(c)
    gc.freeze()
    del c
    gc.collect()
    assert ref() is not None, "an ordinary pass saw a frozen object"
    Collector(lambda: 0.0).full_pass()
    assert ref() is None
    assert gc.get_freeze_count() > 0, "what survived the full pass is frozen again"


def test_a_full_pass_waits_for_a_quiet_mesh_but_not_forever(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(collector_module, "time", SimpleNamespace(
        monotonic=lambda: now[0], perf_counter=time.perf_counter))
    idle = [100.0]
    c = Collector(lambda: idle[0], every=600, quiet=30)
    now[0] += 599
    assert not c.due(), "before its period"
    now[0] += 1
    assert c.due(), "period over, mesh quiet"
    idle[0] = 5
    assert not c.due(), "the mesh changed 5 s ago"
    now[0] += 600
    assert c.due(), "twice the period: busy or not"
    c.full_pass()
    assert not c.due()
