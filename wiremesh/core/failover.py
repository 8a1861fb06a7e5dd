"""Which router peer holds each routed prefix: the client's failover state machine.

Pure: no sockets, no clock. Every call takes `now` (seconds on any monotonic clock) so tests can
drive time by hand and the agent feeds it `time.monotonic()`.

Health of a router comes from probes through the tunnel: a router is declared dead when a probe
sent to it has gone unanswered for its deadline (so nothing is judged while nothing is sent), or
when its WireGuard handshake is older than `handshake_max_age`. The deadline is `dead_after`,
or longer on a slow, jittery or lossy path: the router's smoothed round trip plus four times
its variation (TCP's retransmission timeout, RFC 6298), after the last of a run of probes
sent one interval apart, a run long enough to be lost whole only once in a million at the
path's measured probe loss (and at least `tolerated_losses` + 1 long), so a lossy network
is not a dead router (issue 14: 2 % loss on every link made clients fail over for nothing).
A probe whose answer is overtaken by a newer probe's (a jittery path reorders them) is not
counted lost unless its own answer has not come by the deadline. A dead router that
answers again must stay healthy for `recover_after` before it counts as up, so a flapping
router can't pull traffic back and forth.

Per prefix, the active router moves only when
- it is dead: to the best candidate by (health, metric) that is not dead, at once (no dwell:
  staying on a dead router is a black hole), and nowhere if all are dead;
- it is no longer a candidate (netmap update): to the best remaining candidate, at once;
- `failback == "preferred"`, the last switch is at least `min_dwell` old and a candidate with a
  better metric has been up for `failback_after`: back to that candidate.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

from wiremesh.core.wire import RouteEntry

# UDP port of the probe responder on every router peer's overlay address; the router's
# inbound ACL opens it to the peers allowed to use its routes.
PROBE_PORT = 51999

Failback = Literal["never", "preferred"]
FAILBACK_MODES: tuple[Failback, ...] = ("never", "preferred")

# Probes still waiting for an answer, per router. Old entries are dropped only once they have
# already caused a missed deadline, so the bound never hides a dead router.
_MAX_OUTSTANDING = 256
# Probe loss is estimated quick to rise and slow to fall (a lost probe adds 1/16 of what is
# left, an answer takes 1/256 off): a path that loses now and then keeps its long deadline
# instead of dipping back to the short one between losses (in the lab, on 2 % loss per link,
# an average over 32 probes still let both clients fail over for nothing)...
_LOSS_RISE = 1 / 16
_LOSS_DECAY = 1 / 256
# ... and a router is only declared dead on a run of losses less likely than this (log odds)...
_ODDS = math.log(1e-6)
# ... but loss beyond this is taken for outages, not noise: a router that loses more must
# still be found dead when it flaps (at 5 %, five probes in a row).
_MAX_LOSS = 0.05


@dataclass(frozen=True)
class FailoverConfig:
    dead_after: float = 0.35
    # Probes in a row any path may swallow before its router counts as dead (see above).
    tolerated_losses: int = 2
    recover_after: float = 2.0
    min_dwell: float = 2.0
    failback: Failback = "preferred"
    failback_after: float = 10.0
    # WireGuard's Reject-After-Time: past it no data can pass on the session.
    handshake_max_age: float = 180.0
    # A router that has never answered is judged only after this: its first probe starts the
    # WireGuard handshake, and a lost initiation is retried after Rekey-Timeout (5 s). Judging
    # it by `dead_after` made clients on a lossy or loaded network leave their preferred router
    # at start-up and come back after `failback_after` (issue 14). The price: a router dead
    # from the start is left this late, before any traffic of the client depended on it.
    first_answer_after: float = 5.5

    def __post_init__(self) -> None:
        for name in ("dead_after", "recover_after", "min_dwell", "failback_after",
                     "handshake_max_age", "first_answer_after"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name}: must be a number >= 0, got {value!r}")
        if isinstance(self.tolerated_losses, bool) or not isinstance(
                self.tolerated_losses, int) or self.tolerated_losses < 0:
            raise ValueError("tolerated_losses: must be a whole number >= 0, got "
                             f"{self.tolerated_losses!r}")
        if self.dead_after == 0:
            raise ValueError("dead_after: must be > 0")
        if self.failback not in FAILBACK_MODES:
            raise ValueError(f"failback: must be one of {', '.join(FAILBACK_MODES)}, "
                             f"got {self.failback!r}")


class Health(IntEnum):
    """Ordered best first: failover picks the lowest value, then the lowest metric."""

    UP = 0
    RECOVERING = 1  # was dead, answers again, not yet for `recover_after`
    UNKNOWN = 2  # never judged (just added, nothing sent or answered yet)
    DOWN = 3


@dataclass
class _Router:
    outstanding: deque[float] = field(default_factory=deque)  # send times, oldest first
    # Probes whose answer a newer probe's answer overtook (send times, oldest first): lost,
    # or merely reordered by a jittery path. Settled when their answer comes or at the deadline.
    overtaken: deque[float] = field(default_factory=deque)
    healthy_since: float | None = None  # start of the current unbroken run of answers
    down: bool = False  # declared dead and not yet recovered
    stale_handshake: bool = False
    health: Health = Health.UNKNOWN
    srtt: float | None = None  # smoothed probe round trip (s), None before the first answer
    rttvar: float = 0.0
    loss: float = 0.0  # estimate of probes lost (0..1), see _LOSS_RISE

    def rtt_sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def count_probe(self, lost: bool) -> None:
        if lost:
            self.loss += _LOSS_RISE * (1.0 - self.loss)
        else:
            self.loss -= _LOSS_DECAY * self.loss

    def deadline(self, cfg: FailoverConfig, probe_interval: float) -> float:
        if self.srtt is None:
            return max(cfg.dead_after, cfg.first_answer_after)
        run = cfg.tolerated_losses + 1
        if self.loss > 0:
            run = max(run, math.ceil(_ODDS / math.log(min(self.loss, _MAX_LOSS))))
        return max(cfg.dead_after, (run - 1) * probe_interval + self.srtt + 4 * self.rttvar)

    def settle_overtaken(self, now: float, deadline: float) -> None:
        """Probes overtaken and still unanswered at their deadline were lost."""
        while self.overtaken and (now - self.overtaken[0] >= deadline
                                  or len(self.overtaken) > _MAX_OUTSTANDING):
            self.overtaken.popleft()
            if not self.down:
                self.count_probe(lost=True)

    def refresh(self, now: float, cfg: FailoverConfig, probe_interval: float) -> None:
        self.settle_overtaken(now, self.deadline(cfg, probe_interval))
        missed = (bool(self.outstanding)
                  and now - self.outstanding[0] >= self.deadline(cfg, probe_interval))
        if missed or self.stale_handshake:
            self.healthy_since = None
            self.down = True
        elif (self.down and self.healthy_since is not None
              and now - self.healthy_since >= cfg.recover_after):
            self.down = False
        if self.down:
            self.health = Health.DOWN if self.healthy_since is None else Health.RECOVERING
        else:
            self.health = Health.UNKNOWN if self.healthy_since is None else Health.UP


@dataclass
class _Prefix:
    candidates: tuple[tuple[str, int], ...]  # (router key, metric), best metric first
    active: str | None = None
    switched_at: float = float("-inf")


def merge_candidates(routes: Iterable[RouteEntry]) -> dict[str, tuple[tuple[str, int], ...]]:
    """Prefix -> candidates by metric; routes sharing a prefix pool their routers (best metric
    of a router wins), ties broken by key so every client orders them the same way."""
    best: dict[str, dict[str, int]] = {}
    for r in routes:
        per = best.setdefault(r.prefix, {})
        for key, metric in r.routers:
            per[key] = min(metric, per.get(key, metric))
    return {
        prefix: tuple(sorted(per.items(), key=lambda km: (km[1], km[0])))
        for prefix, per in best.items()
    }


class FailoverMachine:
    def __init__(self, config: FailoverConfig | None = None,
                 probe_interval: float = 0.1) -> None:
        """`probe_interval`: how often the caller probes each router (seconds)."""
        self.config = config or FailoverConfig()
        self.probe_interval = probe_interval
        self._routers: dict[str, _Router] = {}
        self._prefixes: dict[str, _Prefix] = {}

    # --- observations --------------------------------------------------------------------

    def probe_sent(self, key: str, now: float) -> None:
        r = self._routers.get(key)
        if r is None:
            return
        r.outstanding.append(now)
        if len(r.outstanding) > _MAX_OUTSTANDING:
            r.refresh(now, self.config, self.probe_interval)
            if r.health is Health.DOWN:
                r.outstanding.popleft()

    def probe_reply(self, key: str, sent_at: float, now: float) -> None:
        r = self._routers.get(key)
        if r is None:
            return
        if sent_at in r.overtaken:  # a late answer: the path reordered, it lost nothing
            r.overtaken.remove(sent_at)
            r.rtt_sample(now - sent_at)
            if not r.down:
                r.count_probe(lost=False)
        elif r.outstanding and sent_at in r.outstanding:
            r.rtt_sample(now - sent_at)
        while r.outstanding and r.outstanding[0] <= sent_at:
            # Older probes still waiting when a newer one is answered no longer count toward
            # the deadline: the router is alive. Whether they were lost is known later (probes
            # to a router declared dead measure its outage, not its path).
            sent = r.outstanding.popleft()
            if r.down:
                continue
            if sent < sent_at:
                r.overtaken.append(sent)
            else:
                r.count_probe(lost=False)
        if r.healthy_since is None:
            r.healthy_since = now

    def handshake_age(self, key: str, age: float | None, now: float) -> None:
        """`age` in seconds since the last WireGuard handshake, None if there was none yet
        (that alone says nothing: the first probe starts the handshake)."""
        r = self._routers.get(key)
        if r is None:
            return
        r.stale_handshake = age is not None and age > self.config.handshake_max_age

    # --- netmap ----------------------------------------------------------------------------

    def set_routes(self, routes: Iterable[RouteEntry], now: float) -> dict[str, str | None]:
        """Replace the routes; returns the prefixes whose active router changed (None = the
        prefix is gone or has no candidate left)."""
        wanted = merge_candidates(routes)
        keys = {k for cands in wanted.values() for k, _ in cands}
        self._routers = {k: self._routers.get(k) or _Router() for k in keys}
        for r in self._routers.values():
            r.refresh(now, self.config, self.probe_interval)
        changes: dict[str, str | None] = {}
        for prefix in list(self._prefixes):
            if prefix not in wanted:
                del self._prefixes[prefix]
                changes[prefix] = None
        for prefix, cands in wanted.items():
            p = self._prefixes.setdefault(prefix, _Prefix(cands))
            p.candidates = cands
            if all(k != p.active for k, _ in cands):
                self._switch(p, prefix, self._best(cands), now, changes)
        changes.update(self._evaluate(now))
        return changes

    # --- decisions -------------------------------------------------------------------------

    def tick(self, now: float) -> dict[str, str | None]:
        """Re-judge every router and prefix; returns the prefixes whose active router changed."""
        for r in self._routers.values():
            r.refresh(now, self.config, self.probe_interval)
        return self._evaluate(now)

    def active(self, prefix: str) -> str | None:
        p = self._prefixes.get(prefix)
        return p.active if p else None

    def actives(self) -> dict[str, str | None]:
        return {prefix: p.active for prefix, p in self._prefixes.items()}

    def health(self, key: str) -> Health | None:
        """As of the last `tick`/`set_routes`; None for a router no route names."""
        r = self._routers.get(key)
        return r.health if r else None

    def next_deadline(self) -> float | None:
        """When the oldest unanswered probe of some router that is not already dead runs
        out of time (None: no probe is waiting): a caller ticks then."""
        times = [r.outstanding[0] + r.deadline(self.config, self.probe_interval)
                 for r in self._routers.values() if r.outstanding and not r.down]
        return min(times, default=None)

    def routers(self) -> tuple[str, ...]:
        """Every candidate router of any prefix: the ones to probe."""
        return tuple(sorted(self._routers))

    def _rank(self, key: str, metric: int) -> tuple[int, int]:
        return (self._routers[key].health, metric)

    def _best(self, cands: tuple[tuple[str, int], ...]) -> str | None:
        if not cands:
            return None
        return min(cands, key=lambda km: self._rank(*km))[0]

    def _switch(self, p: _Prefix, prefix: str, to: str | None, now: float,
                changes: dict[str, str | None]) -> None:
        if to == p.active:
            return
        p.active = to
        p.switched_at = now
        changes[prefix] = to

    def _evaluate(self, now: float) -> dict[str, str | None]:
        changes: dict[str, str | None] = {}
        cfg = self.config
        for prefix, p in self._prefixes.items():
            if p.active is None:
                continue
            health = self._routers[p.active].health
            if health is Health.DOWN:
                others = [km for km in p.candidates if km[0] != p.active]
                best = self._best(tuple(others))
                if best is not None and self._routers[best].health is not Health.DOWN:
                    self._switch(p, prefix, best, now, changes)
                continue
            if cfg.failback != "preferred" or now - p.switched_at < cfg.min_dwell:
                continue
            metric = dict(p.candidates)[p.active]
            for key, m in p.candidates:  # best metric first
                if m >= metric:
                    break
                r = self._routers[key]
                if (r.health is Health.UP and r.healthy_since is not None
                        and now - r.healthy_since >= cfg.failback_after):
                    self._switch(p, prefix, key, now, changes)
                    break
        return changes

