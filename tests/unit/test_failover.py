"""The failover state machine, driven by hand-made time (no sleeps, no sockets)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiremesh.core.failover import FailoverConfig, FailoverMachine, Health, merge_candidates
from wiremesh.core.wire import RouteEntry

PREFIX = "198.18.1.0/24"
A, B, C = "router-a", "router-b", "router-c"
STEP = 0.01  # simulation resolution
INTERVAL = 0.1  # probe interval


def route(*routers: tuple[str, int], prefix: str = PREFIX, name: str = "net") -> RouteEntry:
    return RouteEntry(name, prefix, tuple(routers))


class Sim:
    """A prober in fake time: probes every router every INTERVAL; routers in `alive` answer
    after `rtt`. Records every decision the machine emits."""

    def __init__(self, cfg: FailoverConfig, routes: list[RouteEntry], rtt: float = 0.005):
        self.m = FailoverMachine(cfg)
        self.now = 0.0
        self.rtt = rtt
        self.alive: set[str] = {A, B, C}
        self.in_flight: list[tuple[float, str, float]] = []  # (arrives, key, sent_at)
        self.next_probe = 0.0
        self.log: list[tuple[float, str, str | None]] = []
        # (time, prefix, previous active, new active, and their health at the switch)
        self.events: list[tuple[float, str, str | None, str | None,
                                Health | None, Health | None]] = []
        self._held: dict[str, str | None] = {}
        self._record(self.m.set_routes(routes, self.now))

    def _record(self, changes: dict[str, str | None]) -> None:
        for prefix, key in changes.items():
            prev = self._held.get(prefix)
            h_prev = self.m.health(prev) if prev is not None else None
            h_new = self.m.health(key) if key is not None else None
            self.events.append((self.now, prefix, prev, key, h_prev, h_new))
            self._held[prefix] = key
            self.log.append((self.now, prefix, key))

    def set_routes(self, routes: list[RouteEntry]) -> dict[str, str | None]:
        changes = self.m.set_routes(routes, self.now)
        self._record(changes)
        return changes

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = round(self.now + STEP, 6)
            arrived = [x for x in self.in_flight if x[0] <= self.now]
            self.in_flight = [x for x in self.in_flight if x[0] > self.now]
            for _, key, sent in arrived:
                self.m.probe_reply(key, sent, self.now)
            if self.now >= self.next_probe - 1e-9:
                self.next_probe = round(self.now + INTERVAL, 6)
                for key in self.m.routers():
                    self.m.probe_sent(key, self.now)
                    rtt = self.answer_rtt(key)
                    if rtt is not None:
                        self.in_flight.append((self.now + rtt, key, self.now))
            self._record(self.m.tick(self.now))

    def answer_rtt(self, key: str) -> float | None:
        """Round trip of the probe just sent to `key`; None: it is never answered."""
        return self.rtt if key in self.alive else None

    def active(self) -> str | None:
        return self.m.active(PREFIX)

    def switches(self) -> list[tuple[float, str | None]]:
        return [(t, k) for t, p, k in self.log if p == PREFIX]


# Routers that never answered are judged like the others here; the start-up grace has its own
# test.
CFG = FailoverConfig(dead_after=0.35, recover_after=1.0, min_dwell=1.0, failback="preferred",
                     failback_after=3.0, first_answer_after=0.35)
TWO = [route((A, 10), (B, 20))]


def test_initial_choice_is_best_metric_and_emitted_once() -> None:
    sim = Sim(CFG, [route((B, 20), (A, 10), (C, 30))])
    assert sim.switches() == [(0.0, A)]
    sim.run(5)
    assert sim.switches() == [(0.0, A)]
    assert sim.m.health(A) is Health.UP


def test_no_change_no_emission() -> None:
    sim = Sim(CFG, TWO)
    sim.run(1)
    assert sim.m.tick(sim.now) == {}
    assert sim.m.set_routes(TWO, sim.now) == {}


def test_missed_deadline_moves_to_next_best_live_router() -> None:
    sim = Sim(CFG, [route((A, 10), (B, 20), (C, 30))])
    sim.run(1)
    sim.alive.discard(A)
    died = sim.now
    sim.run(1)
    (_t0, first), (t1, second) = sim.switches()
    assert (first, second) == (A, B)
    # Declared dead no earlier than dead_after after the first unanswered probe, and no later
    # than one probe interval after that.
    assert CFG.dead_after <= t1 - died <= CFG.dead_after + INTERVAL + STEP
    assert sim.m.health(A) is Health.DOWN


def test_slow_but_answering_router_is_not_declared_dead() -> None:
    sim = Sim(CFG, TWO, rtt=0.3)  # every probe answered just inside the deadline
    sim.run(5)
    assert sim.switches() == [(0.0, A)]


def test_no_probes_means_no_verdict() -> None:
    m = FailoverMachine(CFG)
    m.set_routes(TWO, 0.0)
    m.probe_sent(A, 0.0)
    m.probe_reply(A, 0.0, 0.01)
    # Nothing sent afterwards: silence alone is not evidence of death.
    assert m.tick(100.0) == {}
    assert m.health(A) is Health.UP


def test_late_reply_after_deadline_starts_recovery_not_instant_up() -> None:
    m = FailoverMachine(CFG)
    m.set_routes(TWO, 0.0)
    for k in (A, B):
        m.probe_sent(k, 0.0)
        m.probe_reply(k, 0.0, 0.01)
    m.probe_sent(A, 0.1)
    m.probe_sent(B, 0.1)
    m.probe_reply(B, 0.1, 0.11)
    assert m.tick(0.5) == {PREFIX: B}
    m.probe_reply(A, 0.1, 0.6)  # the answer finally comes
    m.tick(0.6)
    assert m.health(A) is Health.RECOVERING


def test_recovered_router_needs_recover_after_and_failback_after() -> None:
    sim = Sim(CFG, TWO)
    sim.run(1)
    sim.alive.discard(A)
    sim.run(1)
    assert sim.active() == B
    sim.alive.add(A)
    back = sim.now
    sim.run(CFG.recover_after - 0.2)
    assert sim.m.health(A) is Health.RECOVERING
    sim.run(0.4)
    assert sim.m.health(A) is Health.UP
    assert sim.active() == B  # up, but not yet stable for failback_after
    sim.run(CFG.failback_after)
    assert sim.active() == A
    t_back = sim.switches()[-1][0]
    assert CFG.failback_after <= t_back - back <= CFG.failback_after + INTERVAL + 2 * STEP


def test_failback_never_stays_on_the_live_router() -> None:
    cfg = FailoverConfig(dead_after=0.35, recover_after=1.0, min_dwell=1.0, failback="never")
    sim = Sim(cfg, TWO)
    sim.run(1)
    sim.alive.discard(A)
    sim.run(1)
    sim.alive.add(A)
    sim.run(30)
    assert [k for _, k in sim.switches()] == [A, B]
    assert sim.m.health(A) is Health.UP


def test_min_dwell_delays_failback() -> None:
    cfg = FailoverConfig(dead_after=0.35, recover_after=0.2, min_dwell=5.0, failback_after=0.0)
    sim = Sim(cfg, TWO)
    sim.run(1)
    sim.alive.discard(A)
    sim.run(0.5)
    switched = sim.switches()[-1][0]
    sim.alive.add(A)
    sim.run(6)
    t_back = sim.switches()[-1][0]
    assert sim.active() == A
    assert t_back - switched >= cfg.min_dwell


def test_flapping_router_never_gets_traffic_back() -> None:
    sim = Sim(CFG, TWO)
    sim.run(1)
    for _ in range(20):  # 0.6 s dead, 0.6 s alive: never healthy for recover_after
        sim.alive.discard(A)
        sim.run(0.6)
        sim.alive.add(A)
        sim.run(0.6)
    assert [k for _, k in sim.switches()] == [A, B]
    assert sim.m.health(A) is not Health.UP


def test_dead_target_is_skipped() -> None:
    sim = Sim(CFG, [route((A, 10), (B, 20), (C, 30))])
    sim.alive.discard(B)
    sim.run(1)
    sim.alive.discard(A)
    sim.run(1)
    assert [k for _, k in sim.switches()] == [A, C]


def test_all_dead_keeps_prefix_then_moves_to_first_that_answers() -> None:
    sim = Sim(CFG, TWO)
    sim.run(1)
    sim.alive.clear()
    sim.run(2)
    assert sim.switches() == [(0.0, A)]  # nowhere better to go: no churn
    assert sim.m.health(A) is Health.DOWN and sim.m.health(B) is Health.DOWN
    sim.alive.add(B)
    sim.run(0.3)
    # B merely answering beats a silent A; waiting recover_after would prolong the outage.
    assert sim.active() == B
    assert sim.m.health(B) is Health.RECOVERING


def test_stale_handshake_counts_as_dead() -> None:
    sim = Sim(CFG, TWO)
    sim.run(1)
    sim.m.handshake_age(A, CFG.handshake_max_age + 1, sim.now)
    sim.run(0.02)
    assert sim.active() == B
    sim.m.handshake_age(B, None, sim.now)  # no handshake yet says nothing
    sim.run(0.5)
    assert sim.active() == B


def test_removing_the_active_router_switches_at_once_even_within_dwell() -> None:
    sim = Sim(CFG, [route((A, 10), (B, 20), (C, 30))])
    sim.run(0.5)
    assert sim.set_routes([route((B, 20), (C, 30))]) == {PREFIX: B}


def test_netmap_update_keeps_active_if_still_candidate() -> None:
    sim = Sim(CFG, TWO)
    sim.run(1)
    sim.alive.discard(A)
    sim.run(1)
    assert sim.active() == B
    # Metrics change and a better router appears: B stays until the failback rule says so.
    assert sim.set_routes([route((C, 1), (A, 10), (B, 50))]) == {}
    assert sim.m.health(C) is Health.UNKNOWN
    sim.run(CFG.failback_after - 0.5)
    assert sim.active() == B
    sim.run(1)
    assert sim.active() == C


def test_route_removal_and_readdition() -> None:
    sim = Sim(CFG, TWO)
    sim.run(0.5)
    assert sim.set_routes([]) == {PREFIX: None}
    assert sim.m.routers() == ()
    assert sim.set_routes(TWO) == {PREFIX: A}


def test_router_health_is_kept_across_updates_and_dropped_when_unreferenced() -> None:
    sim = Sim(CFG, TWO)
    sim.alive.discard(B)
    sim.run(1)
    assert sim.m.health(B) is Health.DOWN
    sim.set_routes([route((A, 10), (B, 30))])
    assert sim.m.health(B) is Health.DOWN
    sim.set_routes([route((A, 10))])
    assert sim.m.health(B) is None
    sim.set_routes(TWO)
    assert sim.m.health(B) is Health.UNKNOWN


def test_dead_unknown_router_still_better_than_dead_active() -> None:
    sim = Sim(CFG, [route((A, 10))])
    sim.run(1)
    sim.alive.discard(A)
    sim.set_routes(TWO)  # B arrives: unknown so far
    sim.run(0.4)
    assert sim.active() == B


def test_two_prefixes_fail_over_independently() -> None:
    other = "198.18.2.0/24"
    routes = [route((A, 10), (B, 20)), route((B, 10), (C, 20), prefix=other, name="net2")]
    sim = Sim(CFG, routes)
    assert sim.m.actives() == {PREFIX: A, other: B}
    sim.run(1)
    sim.alive.discard(B)
    sim.run(1)
    assert sim.m.actives() == {PREFIX: A, other: C}


def test_routes_sharing_a_prefix_pool_their_routers() -> None:
    merged = merge_candidates([
        route((A, 10), (C, 20), name="x"),
        route((A, 30), (B, 20), name="y"),
    ])
    assert merged == {PREFIX: ((A, 10), (B, 20), (C, 20))}


def test_unknown_router_events_are_ignored() -> None:
    m = FailoverMachine(CFG)
    m.set_routes(TWO, 0.0)
    m.probe_sent("stranger", 0.0)
    m.probe_reply("stranger", 0.0, 0.1)
    m.handshake_age("stranger", 1e6, 0.1)
    assert m.routers() == (A, B)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dead_after": 0}, "dead_after"),
        ({"recover_after": -1}, "recover_after"),
        ({"min_dwell": "x"}, "min_dwell"),
        ({"failback": "sometimes"}, "failback"),
        ({"failback_after": -0.1}, "failback_after"),
        ({"tolerated_losses": 1.5}, "tolerated_losses"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        FailoverConfig(**kwargs)


@settings(max_examples=60, deadline=None)
@given(
    schedule=st.lists(
        st.tuples(st.sampled_from([A, B, C]), st.booleans(), st.floats(0.05, 1.5)),
        min_size=1, max_size=25,
    ),
    failback=st.sampled_from(["never", "preferred"]),
)
def test_invariants_under_random_outages(schedule: list, failback: str) -> None:
    cfg = FailoverConfig(dead_after=0.35, recover_after=1.0, min_dwell=1.0, failback=failback,
                         failback_after=2.0)
    sim = Sim(cfg, [route((A, 10), (B, 20), (C, 30))])
    metric = {A: 10, B: 20, C: 30}
    for key, up, duration in schedule:
        (sim.alive.add if up else sim.alive.discard)(key)
        sim.run(duration)
    last_switch = 0.0
    for t, _, prev, new, h_prev, h_new in sim.events[1:]:
        assert new in (A, B, C)
        if h_prev is Health.DOWN:
            # Forced: only ever to a router that is not dead itself.
            assert h_new is not Health.DOWN
        else:
            # Voluntary: only a failback, to a better metric, after the dwell time.
            assert failback == "preferred"
            assert prev is not None and metric[new] < metric[prev]
            assert t - last_switch >= cfg.min_dwell
        last_switch = t



class LossySim(Sim):
    """Each probe or answer is lost with probability `loss` and delayed 0-100 ms (one
    underlay hop with 2 % loss and 50 ms jitter each way)."""

    def __init__(self, cfg: FailoverConfig, routes: list[RouteEntry], loss: float,
                 seed: int) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        super().__init__(cfg, routes)

    def answer_rtt(self, key: str) -> float | None:
        lost = self.rng.random() < self.loss or self.rng.random() < self.loss
        if key in self.alive and not lost:
            return self.rng.uniform(0, 0.1) + self.rng.uniform(0, 0.1)
        return None


@pytest.mark.parametrize("seed", range(3))
def test_a_lossy_jittery_path_is_no_dead_router_and_a_dead_one_still_fails_over(
        seed: int) -> None:
    sim = LossySim(CFG, [route((A, 10), (B, 20))], loss=0.02, seed=seed)
    sim.run(120)
    assert sim.switches() == [(0.0, A)]
    sim.alive.discard(A)
    died = sim.now
    sim.run(2)
    (_t0, _first), (t1, second) = sim.switches()
    assert second == B
    assert t1 - died < 0.8


def test_a_clean_path_keeps_the_short_deadline() -> None:
    # With answers in 5 ms the deadline is dead_after: the adaptive part only ever adds.
    sim = Sim(CFG, TWO)
    sim.run(2)
    sim.alive.discard(A)
    died = sim.now
    sim.run(1)
    assert sim.switches()[-1][0] - died <= CFG.dead_after + INTERVAL + STEP


def test_next_deadline_is_when_the_oldest_unanswered_probe_runs_out() -> None:
    m = FailoverMachine(CFG)
    m.set_routes(TWO, 0.0)
    assert m.next_deadline() is None
    m.probe_sent(A, 1.0)
    m.probe_sent(A, 1.1)
    m.probe_sent(B, 1.05)
    assert m.next_deadline() == pytest.approx(1.0 + CFG.dead_after)
    m.probe_reply(A, 1.0, 1.01)
    assert m.next_deadline() == pytest.approx(1.05 + CFG.dead_after)
    m.tick(2.0)  # both overdue: declared dead, nothing more to wait for
    assert m.next_deadline() is None


def test_router_that_never_answered_gets_a_handshake_retry_before_it_is_judged() -> None:
    cfg = FailoverConfig(dead_after=0.35, first_answer_after=5.5)
    sim = Sim(cfg, TWO)
    sim.alive.discard(A)  # A's first handshake is lost: no answer for a while
    sim.run(5.0)
    assert sim.switches() == [(0.0, A)]  # no start-up flap to B and back
    assert sim.m.health(A) is Health.UNKNOWN and sim.m.health(B) is Health.UP
    sim.run(0.7)
    assert sim.active() == B  # ...but a router dead from the start is still left
    sim.alive.add(A)
    sim.run(cfg.failback_after + cfg.recover_after + 1)
    assert sim.active() == A
    sim.alive.discard(A)  # once it has answered, dead_after applies again
    sim.run(0.6)
    assert sim.active() == B


def lossy_failover_s(loss: float, seed: int, settle: float = 60) -> float:
    """Seconds from A's death to the switch to B, after `settle` s on a path losing `loss`
    each way with 0-100 ms jitter each way."""
    sim = LossySim(CFG, [route((A, 10), (B, 20))], loss=loss, seed=seed)
    sim.run(settle)
    assert sim.switches() == [(0.0, A)]
    sim.alive.discard(A)
    died = sim.now
    sim.run(2)
    assert sim.active() == B
    return sim.switches()[-1][0] - died


def test_reordering_is_not_loss() -> None:
    # 0-200 ms round trips, probes 100 ms apart: answers overtake each other all the time.
    # Counted as losses they gave the path the long deadline of a lossy one.
    # Not lossy, the deadline is the run of tolerated_losses + 1 probes and a round trip
    # (~0.2 + 0.23 s); counted as lossy it was ~0.4 + 0.23 s.
    worst = max(lossy_failover_s(0.0, seed) for seed in range(5))
    assert worst < 0.55


def test_a_lossy_jittery_path_fails_over_well_within_a_second() -> None:
    # Issue 14: p99 < 1 s end to end; the judgement may take at most ~0.7 of it, the new
    # router's answers and the client's write the rest.
    times = sorted(lossy_failover_s(0.02, seed) for seed in range(10))
    assert times[-1] < 0.72, times
