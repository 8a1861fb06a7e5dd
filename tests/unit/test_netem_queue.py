"""The userspace netem's rules, its queue-state parsing and its delay distribution."""

from __future__ import annotations

import random

import pytest

from wiremesh.lab.netem_queue import Impairment, bound_queues, rule_commands


def test_rules_queue_the_links_egress_for_ipv4_and_ipv6() -> None:
    add = rule_commands("wm12e3", "-A", 9)
    assert [c[0] for c in add] == ["iptables", "ip6tables"]
    for cmd in add:
        assert cmd[1:] == ["-w", "-t", "mangle", "-A", "POSTROUTING", "-o", "wm12e3",
                           "-j", "NFQUEUE", "--queue-num", "9"]
    # Deleting names exactly the rule that was added.
    assert [[a if a != "-D" else "-A" for a in c] for c in rule_commands("wm12e3", "-D", 9)] \
        == add


def test_rules_refuse_an_unknown_action() -> None:
    with pytest.raises(ValueError, match=r"^action:"):
        rule_commands("wm12e3", "-I")


def test_bound_queues_reads_the_kernels_table() -> None:
    text = ("    7 123456     0 2     0     0     0        5  1\n"
            "   12 654321     3 1 65531     0     0       99  1\n")
    assert bound_queues(text) == {7, 12}
    assert bound_queues("") == set()


def test_hold_is_uniform_over_delay_plus_minus_jitter() -> None:
    rng = random.Random(1)
    imp = Impairment(delay_ms=50, jitter_ms=50)
    holds = [imp.hold_s(rng) for _ in range(20000)]
    assert 0 <= min(holds) < 0.002 and 0.098 < max(holds) <= 0.1
    assert sum(holds) / len(holds) == pytest.approx(0.05, abs=0.002)
    assert sum(h < 0.025 for h in holds) / len(holds) == pytest.approx(0.25, abs=0.02)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"delay_ms": 10, "jitter_ms": 20}, "jitter_ms"),
    ({"jitter_ms": -1}, "jitter_ms"),
    ({"loss_pct": 101}, "loss_pct"),
])
def test_bad_impairment_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        Impairment(**kwargs)
