"""First contact of a new pair (core/contact.py) with fake time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wiremesh.core.contact import FirstContact, initiates


def test_holds_then_resets_until_a_handshake() -> None:
    fc = FirstContact(hold=0.25, retry=0.5, window=10)
    fc.add("k", 100.0)
    assert fc.holding("k") and fc.next_due() == 100.25
    assert fc.due(100.2, lambda _k: False) == []
    assert fc.due(100.25, lambda _k: False) == ["k"]
    assert not fc.holding("k") and fc.next_due() == 100.75
    assert fc.due(100.75, lambda _k: False) == ["k"]  # crossed again: one more fresh try
    assert fc.due(101.25, lambda _k: True) == []
    assert fc.next_due() is None and not fc.holding("k")


def test_a_handshake_during_the_hold_releases_without_reset() -> None:
    fc = FirstContact(hold=0.25)
    fc.add("k", 0.0)
    assert fc.due(0.3, lambda _k: True) == [] and fc.next_due() is None


def test_gives_up_after_the_window_and_forgets_removed_peers() -> None:
    fc = FirstContact(hold=0.25, retry=0.5, window=2)
    fc.add("a", 0.0)
    fc.add("b", 0.0)
    fc.keep_only(["a"])
    resets = []
    t = 0.0
    while fc.next_due() is not None:
        t = fc.next_due()  # type: ignore[assignment]
        resets += fc.due(t, lambda _k: False)
    assert set(resets) == {"a"} and 1.5 <= t <= 2.25 and len(resets) == 4


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_exactly_one_side_initiates(a: bytes, b: bytes) -> None:
    if a != b:
        assert initiates(a, b) != initiates(b, a)
