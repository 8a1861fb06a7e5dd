"""First contact between two peers that just learnt of each other (pure, time passed in).

WireGuard's handshake has two ways to lose a new pair for 5 s (REKEY_TIMEOUT), and both
happen when a policy change lets two peers talk:

- *crossing*: both sides send an initiation at once (one from its keepalive, the other
  because traffic is already waiting). Each side consumes the other's initiation, which
  overwrites its own pending one, so both answers are dropped and both sides sit on
  responder-only sessions until the retry 5 s later;
- *too early*: an initiation reaches a side that has not configured the sender yet and is
  dropped; the sender may not initiate again for 5 s, traffic or not.

So exactly one side of a new pair (the larger key, `initiates`) initiates at once. The other
configures the peer *without an endpoint* for `hold` seconds: its own traffic cannot put an
initiation on the wire (no crossing), and it answers the initiator's initiation, learning the
endpoint from it. If no handshake completed when the hold ends (the initiation came too early,
was lost, or the initiator has not heard of us yet), this side takes over: it re-creates the
peer with its endpoint (a fresh peer is not rate-limited, whatever its traffic tried before),
which initiates at once; and again every `retry` seconds for `window` seconds while no
handshake completes, which also breaks a crossing of its own initiation with a late one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

HOLD_S = 0.25
RETRY_S = 0.5
WINDOW_S = 10.0


def initiates(own_key: bytes, peer_key: bytes) -> bool:
    """Which side of a new pair starts the handshake at once (both sides agree)."""
    return own_key > peer_key


@dataclass
class _Pending:
    since: float
    due: float
    holding: bool = True


class FirstContact:
    """The non-initiating side's watch over its new peers."""

    def __init__(self, hold: float = HOLD_S, retry: float = RETRY_S,
                 window: float = WINDOW_S) -> None:
        self.hold, self.retry, self.window = hold, retry, window
        self.pending: dict[str, _Pending] = {}

    def add(self, key: str, now: float) -> None:
        self.pending[key] = _Pending(now, now + self.hold)

    def keep_only(self, keys: Iterable[str]) -> None:
        keep = set(keys)
        self.pending = {k: p for k, p in self.pending.items() if k in keep}

    def holding(self, key: str) -> bool:
        """Whether `key` must be configured without endpoint and keepalive now."""
        p = self.pending.get(key)
        return p is not None and p.holding

    def next_due(self) -> float | None:
        return min((p.due for p in self.pending.values()), default=None)

    def due(self, now: float, handshaken: Callable[[str], bool]) -> list[str]:
        """The peers to re-create now (endpoint set, initiating). Peers that completed a
        handshake, or whose window ran out, are released for good."""
        reset = []
        for key, p in list(self.pending.items()):
            if p.due > now:
                continue
            if handshaken(key) or now - p.since >= self.window:
                del self.pending[key]
                continue
            p.holding = False
            p.due = now + self.retry
            reset.append(key)
        return reset
