"""The per-peer path state machine (core/paths.py) on a fake clock."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from wiremesh.core.paths import Change, Mode, PathTable

A = ("203.0.113.5:51820", "198.19.1.5:51820")


def run_until(t: PathTable, start: float, end: float, answer=None) -> list[Change]:
    """Tick from `start` to `end` at every due time; `answer(key, endpoint, now)` says which
    probes come back (answered at once)."""
    now, changes = start, []
    while now <= end:
        probes, ch = t.tick(now, wall=now)
        changes += ch
        for key, eps in probes:
            for ep in eps:
                if answer and answer(key, ep, now):
                    c = t.answered(key, ep, now)
                    if c:
                        changes.append(c)
        due = t.next_due()
        now = max(now + 0.001, due if due is not None else end + 1)
    return changes


def test_first_answering_candidate_wins() -> None:
    t = PathTable(relay=True)
    t.set_peers({"k": A}, 0.0)
    assert t.direct_endpoint("k") == A[0]  # the best guess until a probe answers
    changes = run_until(t, 0.0, 0.5, lambda _k, ep, _n: ep == A[1])
    assert changes == [Change("k", Mode.DIRECT, A[1])]
    assert t.direct_endpoint("k") == A[1] and (t.attempts, t.successes) == (1, 1)


def test_relay_after_the_deadline_then_direct_again_at_an_aligned_retry() -> None:
    t = PathTable(relay=True, deadline=1.0, retry=30.0)
    t.set_peers({"k": A}, 100.0)
    changes = run_until(t, 100.0, 101.0)
    assert changes == [Change("k", Mode.RELAY, None)]
    assert t.direct_endpoint("k") is None
    # No probe before the next multiple of 30 s on the wall clock (120): both sides meet there.
    probes_before = []
    now = 101.0
    while (due := t.next_due()) is not None and due < 120.0:
        now = due
        probes_before += t.tick(now, now)[0]
    assert probes_before == [] and t.next_due() == 120.0
    changes = run_until(t, 120.0, 121.5, lambda _k, ep, _n: ep == A[0])
    assert changes == [Change("k", Mode.DIRECT, A[0])]
    assert (t.attempts, t.successes) == (2, 1)


def test_a_direct_path_that_falls_silent_is_relayed_and_kept_meanwhile() -> None:
    t = PathTable(relay=True, keepalive=5.0, dead_after=16.0)
    t.set_peers({"k": A}, 0.0)
    run_until(t, 0.0, 0.3, lambda *_: True)
    assert t.peers["k"].mode == Mode.DIRECT
    changes = run_until(t, 0.3, 10.0, lambda *_: True)
    assert changes == []
    changes = run_until(t, 10.0, 40.0)  # silence from here on
    assert [c.mode for c in changes] == [Mode.RELAY]
    assert t.peers["k"].next_probe >= 26.0  # waits for the aligned retry


def test_answers_from_other_paths_do_not_keep_a_dead_one_alive() -> None:
    t = PathTable(relay=True, keepalive=5.0, dead_after=16.0)
    t.set_peers({"k": A}, 0.0)
    run_until(t, 0.0, 0.3, lambda _k, ep, _n: ep == A[0])
    changes = run_until(t, 0.3, 40.0, lambda _k, ep, _n: ep == A[1])
    assert changes == [Change("k", Mode.DIRECT, A[1])]  # moved, never relayed


def test_new_candidates_and_rebinding_probe_again_without_dropping_the_path() -> None:
    t = PathTable(relay=False)
    t.set_peers({"k": A}, 0.0)
    run_until(t, 0.0, 0.3, lambda *_: True)
    t.set_peers({"k": ("192.0.2.9:40000",)}, 5.0)
    assert t.peers["k"].mode == Mode.PROBING and t.direct_endpoint("k") == A[0]
    changes = run_until(t, 5.0, 5.5, lambda *_: True)
    assert changes == [Change("k", Mode.DIRECT, "192.0.2.9:40000")]
    t.rebind(9.0)
    assert t.peers["k"].mode == Mode.PROBING
    t.set_peers({}, 10.0)
    assert t.peers == {}


def test_probes_go_back_to_where_the_peer_probed_from() -> None:
    t = PathTable(relay=True)
    t.set_peers({"k": A}, 0.0)
    assert t.probed_from("k", "203.0.113.5:61000", 0.0)
    assert not t.probed_from("k", "203.0.113.5:61000", 0.0)
    assert not t.probed_from("k", A[0], 0.0) and not t.probed_from("unknown", "192.0.2.1:1", 0.0)
    probes, _ = t.tick(0.0, 0.0)
    assert probes == [("k", [*A, "203.0.113.5:61000"])]


def test_without_a_relay_a_peer_keeps_its_best_guess() -> None:
    t = PathTable(relay=False)
    t.set_peers({"k": A}, 0.0)
    assert run_until(t, 0.0, 5.0) == []
    assert t.direct_endpoint("k") == A[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.05, 3.0), st.booleans()), min_size=1, max_size=40))
def test_never_relayed_while_answering_and_never_direct_without_an_answer(steps) -> None:
    """Whatever the answers do over time: a peer is DIRECT only on an endpoint that
    answered, and RELAY only after a full deadline without answers."""
    t = PathTable(relay=True, deadline=1.0, keepalive=0.5, dead_after=2.0, retry=5.0)
    t.set_peers({"k": A}, 0.0)
    now, answered_at = 0.0, None
    for dt, answering in steps:
        end = now + dt
        while True:
            due = t.next_due()
            if due is None or due > end:
                break
            now = max(now, due)
            probes, changes = t.tick(now, now)
            for c in changes:
                assert c.mode == Mode.RELAY
                assert answered_at is None or now - answered_at > 1.0
            for _key, eps in probes:
                if answering:
                    c = t.answered("k", eps[0], now)
                    answered_at = now
                    if c:
                        assert c.mode == Mode.DIRECT and c.endpoint == eps[0]
        now = end
    p = t.peers["k"]
    assert p.mode != Mode.DIRECT or (answered_at is not None and p.endpoint in A)


def test_probe_keys_agree_and_strangers_fail_the_mac() -> None:
    import os

    import pytest

    from wiremesh.core import disco
    from wiremesh.wg.keys import decode_key, generate_private_key, public_key_of

    a, b, c = (generate_private_key() for _ in range(3))
    pa, pb = decode_key(public_key_of(a)), decode_key(public_key_of(b))
    k_ab = disco.link_key(decode_key(a), pb)
    assert k_ab == disco.link_key(decode_key(b), pa)
    txid = os.urandom(12)
    msg = disco.encode(disco.PING, pa, txid, k_ab)
    assert msg[:1] not in (b"\x01", b"\x02", b"\x03", b"\x04")  # never mistaken for WireGuard
    assert disco.peek_sender(msg) == pa
    assert disco.decode(msg, k_ab) == disco.Probe(disco.PING, pa, txid)
    forged = disco.encode(disco.PING, pa, txid, disco.link_key(decode_key(c), pb))
    with pytest.raises(disco.DiscoError, match="MAC"):
        disco.decode(forged, k_ab)
    flipped = bytearray(msg)
    flipped[20] ^= 1
    with pytest.raises(disco.DiscoError):
        disco.decode(bytes(flipped), k_ab)
    for junk in (b"", msg[:-1], b"WMD1" + bytes([9]) + bytes(76)):
        with pytest.raises(disco.DiscoError):
            disco.decode(junk, k_ab)


def test_a_direct_peer_probing_from_a_new_address_is_followed() -> None:
    """It roamed: its probes come from a new NAT mapping, and the pong from there wins."""
    t = PathTable(relay=True)
    t.set_peers({"k": A}, 0.0)
    run_until(t, 0.0, 0.3, lambda _k, ep, _n: ep == A[0])
    assert t.probed_from("k", "192.0.2.77:4000", 5.0)
    changes = run_until(t, 5.0, 5.5, lambda _k, ep, _n: ep == "192.0.2.77:4000")
    assert changes == [Change("k", Mode.DIRECT, "192.0.2.77:4000")]


def test_a_relayed_peer_that_pings_us_is_probed_back_at_once() -> None:
    """It came up after our burst gave up: no waiting for the aligned retry."""
    t = PathTable(relay=True, retry=30.0)
    t.set_peers({"k": A}, 0.0)
    run_until(t, 0.0, 1.0)
    assert t.peers["k"].mode == Mode.RELAY
    t.pinged("k", 3.0)
    changes = run_until(t, 3.0, 3.5, lambda _k, ep, _n: ep == A[0])
    assert changes == [Change("k", Mode.DIRECT, A[0])]


def test_nothing_we_route_into_our_own_tunnel_is_ever_a_path() -> None:
    # A router's overlay address or its LAN behind a routed prefix answers probes sent
    # through the tunnel; as WireGuard's endpoint it loops the peer's packets into itself.
    tunnel = [ipaddress.IPv4Network("100.64.0.0/10"), ipaddress.IPv4Network("198.18.1.0/24")]
    t = PathTable(relay=True)
    t.set_peers({"k": ("198.18.1.3:51820", *A)}, 0.0, tunnel)
    probes, _ = t.tick(0.0, 0.0)
    assert probes == [("k", list(A))]
    assert not t.probed_from("k", "100.64.0.6:51820", 0.0)
    assert t.answered("k", "100.64.0.6:51820", 0.1) is None
    assert t.direct_endpoint("k") == A[0]
    # Even once direct, a probe through the tunnel does not pull the path in there.
    run_until(t, 0.1, 0.5, lambda _k, ep, _n: ep == A[1])
    assert t.direct_endpoint("k") == A[1]
    assert not t.probed_from("k", "100.64.0.6:51820", 0.6)
    probes, _ = t.tick(5.7, 5.7)
    assert all("100.64.0.6:51820" not in eps for _, eps in probes)
