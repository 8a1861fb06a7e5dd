"""The NAT lab's expectation: which pairs a correct design connects directly (issue 10's rule)."""

from __future__ import annotations

import pytest

from wiremesh.lab.layout import Layout, NatKind, direct_expected, direct_possible

PP, RAND, UDP = NatKind.PORT_PRESERVING, NatKind.RANDOM_PORT, NatKind.UDP_BLOCKED
LAYOUT = Layout(
    {"pub": None, "pub2": None, "pp1": "n1", "pp2": "n2", "sym": "n3", "sym2": "n6",
     "lan1": "n4", "lan2": "n4", "udp": "n5", "symlan1": "n7", "symlan2": "n7"},
    {"n1": PP, "n2": PP, "n3": RAND, "n4": PP, "n5": UDP, "n6": RAND, "n7": RAND},
)


@pytest.mark.parametrize(("a", "b", "direct"), [
    ("pub", "pub2", True),
    ("pub", "pp1", True),
    ("pub", "sym", True),  # a random-port NAT still meets a public peer
    ("pub", "udp", False),  # no UDP leaves, whoever the other side is
    ("pp1", "pp2", True),  # both port-preserving: the mapping can be predicted
    ("pp1", "sym", False),  # random port against address-and-port filtering
    ("sym", "sym2", False),
    ("lan1", "lan2", True),  # same NAT: over the LAN
    ("symlan1", "symlan2", True),  # same NAT, even a random-port one
    ("lan1", "pp1", True),
    ("udp", "udp", False),
])
def test_direct_possible(a: str, b: str, direct: bool) -> None:
    assert direct_possible(LAYOUT, a, b) is direct
    assert direct_possible(LAYOUT, b, a) is direct


def test_direct_expected_counts_ordered_pairs_of_distinct_peers() -> None:
    layout = Layout({"pub": None, "pp": "n1", "sym": "n2", "udp": "n3"},
                    {"n1": PP, "n2": RAND, "n3": UDP})
    assert direct_expected(layout) == {("pub", "pp"), ("pp", "pub"), ("pub", "sym"),
                                       ("sym", "pub")}
    assert direct_expected(Layout.public(["a", "b", "c"])) == {
        (a, b) for a in "abc" for b in "abc" if a != b}


def test_moving_a_peer_changes_what_is_expected() -> None:
    layout = Layout({"a": "n1", "b": "n2"}, {"n1": PP, "n2": PP, "n3": RAND})
    assert direct_possible(layout, "a", "b")
    assert not direct_possible(layout.moved("a", "n3"), "a", "b")
    assert layout.peers["a"] == "n1"  # the original is untouched


def test_a_peer_behind_an_unknown_nat_is_refused() -> None:
    with pytest.raises(ValueError, match="peer 'x': no NAT named 'n9'"):
        Layout({"x": "n9"})
