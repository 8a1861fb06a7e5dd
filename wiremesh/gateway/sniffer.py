"""The gateway's tap: handshake initiations to the listen port (see wg/tap.py for why a
packet socket).

The tap sits before netfilter, so the guard (guard.py) can keep initiations the gateway has
not admitted away from wireguard-go while the gateway still reads all of them. The price of a
copy is that the client's initiation itself is not delivered to a peer installed a millisecond
later, so the provisioner completes the handshake by having the gateway initiate one itself
(see provisioner.py) instead of replaying the client's packet.
"""

from __future__ import annotations

from wiremesh.gateway.noise import INITIATION_SIZE, MESSAGE_INITIATION
from wiremesh.wg.tap import _JEQ_K, PacketTap, udp_port_filter

_UDP_LEN = 8 + INITIATION_SIZE


def initiation_filter(port: int) -> list[tuple[int, int, int, int]]:
    """Incoming UDP to `port` with a 148-byte payload starting with type 1."""
    return udp_port_filter(port, lambda load: [
        load(2, 4),
        (_JEQ_K, _UDP_LEN, None, "drop"),
        load(1, 8),
        (_JEQ_K, MESSAGE_INITIATION, "ok", "drop"),
    ])


# An initiation older than this is skipped unread: its client retries after 5 s, and a
# cookie reply answers only its latest initiation, so answering a stale one wastes the DH or
# the cookie; a gateway that fell behind catches up on what is still worth answering.
MAX_AGE_S = 2.0


class InitiationTap(PacketTap):
    def __init__(self, port: int, ifname: str | None = None, rcvbuf: int = 32 << 20,
                 max_age: float = MAX_AGE_S) -> None:
        super().__init__(initiation_filter(port), ifname, rcvbuf, max_age)
