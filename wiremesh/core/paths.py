"""Which path each peer's WireGuard packets take: direct to one of its candidates, or through
the relay (pure; time is passed in, so tests run on a fake clock).

Per peer:

- PROBING: a new peer, new candidates, or our own addresses changed. Probes go to every
  candidate every `probe_every` seconds; the first candidate that answers is the path
  (DIRECT). Meanwhile WireGuard keeps whatever endpoint it had, so a working tunnel is never
  dropped while a better one is looked for. No answer within `deadline`: RELAY (if there is
  a relay; otherwise keep the first candidate and probe again later).
- DIRECT: probes every `keepalive` seconds; `dead_after` seconds without an answer and the
  peer is probed afresh (and relayed if that fails).
- RELAY: every `retry` seconds, at the same wall-clock moments on both sides (the peers'
  clocks are the coordination: a hole through two NATs opens only when both sides send at
  once), a probe burst of `deadline` seconds tries direct again; an answer moves the peer back
  to DIRECT without touching the WireGuard session.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from wiremesh.core.wire import endpoint_host_port

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEADLINE_S = 1.0
PROBE_EVERY_S = 0.2
KEEPALIVE_S = 5.0
DEAD_AFTER_S = 16.0
RETRY_S = 30.0


class Mode(StrEnum):
    PROBING = "probing"
    DIRECT = "direct"
    RELAY = "relay"


@dataclass
class PeerPath:
    candidates: tuple[str, ...]
    mode: Mode = Mode.PROBING
    endpoint: str | None = None  # the direct endpoint in use (DIRECT)
    relayed: bool = False  # WireGuard currently goes through the relay
    burst_until: float = 0.0  # probing ends (PROBING, or a retry burst while relayed)
    next_probe: float = 0.0
    last_answer: float | None = None
    extra: set[str] = field(default_factory=set)  # sources probes came from (NAT mappings)


@dataclass(frozen=True)
class Change:
    key: str
    mode: Mode
    endpoint: str | None


class PathTable:
    def __init__(self, relay: bool, deadline: float = DEADLINE_S,
                 probe_every: float = PROBE_EVERY_S, keepalive: float = KEEPALIVE_S,
                 dead_after: float = DEAD_AFTER_S, retry: float = RETRY_S) -> None:
        self.relay = relay
        self.deadline, self.probe_every = deadline, probe_every
        self.keepalive, self.dead_after, self.retry = keepalive, dead_after, retry
        self.peers: dict[str, PeerPath] = {}
        self.tunnelled: tuple[IPNetwork, ...] = ()
        self.attempts = 0  # probe bursts started (hole-punch attempts)
        self.successes = 0  # bursts that found a direct path

    # --- inputs -----------------------------------------------------------------------------

    def set_peers(self, candidates: Mapping[str, Iterable[str]], now: float,
                  tunnelled: Iterable[IPNetwork] = ()) -> None:
        """The netmap's peers and their candidates: new peers and changed candidates are
        probed at once, peers gone are forgotten. Endpoints in `tunnelled` (what we route into
        our own tunnel) are never a path: a probe there goes through the tunnel and may well be
        answered, but WireGuard sending its packets there loops them into itself (issue 14:
        a client whose router died took another router's overlay address for its endpoint,
        learnt from a probe that came through the tunnel, and lost that router too)."""
        self.tunnelled = tuple(tunnelled)
        for key in self.peers.keys() - candidates.keys():
            del self.peers[key]
        for key, cands in candidates.items():
            cands = tuple(c for c in cands if not self.through_tunnel(c))
            p = self.peers.get(key)
            if p is None:
                self.peers[key] = p = PeerPath(cands)
                self._burst(p, now)
            elif p.candidates != cands:
                p.candidates = cands
                self._burst(p, now)

    def rebind(self, now: float) -> None:
        """Our own addresses or NAT mapping changed (roaming): probe every peer again."""
        for p in self.peers.values():
            self._burst(p, now)

    def answered(self, key: str, endpoint: str, now: float) -> Change | None:
        """A probe to `endpoint` was answered: that path works."""
        p = self.peers.get(key)
        if p is None or self.through_tunnel(endpoint):
            return None
        if p.mode == Mode.DIRECT:
            # Only the path in use counts: its silence is what moves the peer away.
            if endpoint == p.endpoint:
                p.last_answer = now
            return None
        p.last_answer = now
        if p.burst_until:
            self.successes += 1
        p.mode, p.endpoint, p.relayed, p.burst_until = Mode.DIRECT, endpoint, False, 0.0
        p.next_probe = now + self.keepalive
        return Change(key, p.mode, p.endpoint)

    def pinged(self, key: str, now: float) -> None:
        """The peer probed us: it is up and wants a path now. A peer we are not direct with
        is probed back at once (it may have come up after our last burst gave up)."""
        p = self.peers.get(key)
        if p is not None and p.mode != Mode.DIRECT and not p.burst_until:
            self._burst(p, now)

    def probed_from(self, key: str, source: str, now: float) -> bool:
        """A peer's probe arrived from `source`: probe it back there (the NAT mapping it
        came through may be the only way in). True if it is new."""
        p = self.peers.get(key)
        if (p is None or source in p.candidates or source in p.extra
                or self.through_tunnel(source)):
            return False
        p.extra.add(source)
        if p.mode == Mode.DIRECT:
            self._burst(p, now)  # a direct peer probing from elsewhere has likely moved
        return True

    def through_tunnel(self, endpoint: str) -> bool:
        try:
            ip = ipaddress.ip_address(endpoint_host_port(endpoint)[0].split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in n for n in self.tunnelled)

    # --- the clock ------------------------------------------------------------------------

    def tick(self, now: float, wall: float) -> tuple[list[tuple[str, list[str]]], list[Change]]:
        """(probes to send now: (peer, endpoints), path changes). `wall` is the wall clock
        (seconds since the epoch), which relayed peers' retries are aligned to."""
        probes, changes = [], []
        for key, p in self.peers.items():
            if p.burst_until and now >= p.burst_until:
                p.burst_until = 0.0
                if p.mode != Mode.DIRECT and (p.last_answer is None
                                              or now - p.last_answer > self.deadline):
                    if self.relay and not p.relayed:
                        p.mode, p.endpoint, p.relayed = Mode.RELAY, None, True
                        changes.append(Change(key, p.mode, None))
                    p.next_probe = now + self._until_retry(wall)
            if p.mode == Mode.DIRECT and p.last_answer is not None \
                    and now - p.last_answer > self.dead_after:
                self._burst(p, now)
            if p.mode == Mode.RELAY and not p.burst_until and now >= p.next_probe:
                self._burst(p, now)
            if now >= p.next_probe:
                probes.append((key, self._targets(p)))
                p.next_probe = now + (self.probe_every if p.burst_until else self.keepalive)
        return probes, changes

    def next_due(self) -> float | None:
        times = [p.next_probe for p in self.peers.values()]
        times += [p.burst_until for p in self.peers.values() if p.burst_until]
        return min(times, default=None)

    # --- what WireGuard should use --------------------------------------------------------

    def direct_endpoint(self, key: str) -> str | None:
        """The direct endpoint for `key`: the one that answered, else (not relayed) the
        best candidate as a first guess; None when the peer goes through the relay."""
        p = self.peers.get(key)
        if p is None:
            return None
        if p.endpoint is not None:
            return p.endpoint
        if p.relayed:
            return None
        return p.candidates[0] if p.candidates else None

    def counts(self) -> dict[str, int]:
        out = {m.value: 0 for m in Mode}
        for p in self.peers.values():
            out[p.mode.value] += 1
        return out

    # --- internals ------------------------------------------------------------------------

    def _burst(self, p: PeerPath, now: float) -> None:
        if not p.burst_until:
            self.attempts += 1
        if p.mode == Mode.DIRECT:
            p.mode = Mode.PROBING  # keeps its endpoint until the burst decides
        p.burst_until = now + self.deadline
        p.next_probe = now

    def _targets(self, p: PeerPath) -> list[str]:
        return list(dict.fromkeys([*p.candidates, *sorted(p.extra)]))

    def _until_retry(self, wall: float) -> float:
        """Seconds to the next multiple of `retry` on the wall clock."""
        return (math.floor(wall / self.retry) + 1) * self.retry - wall
