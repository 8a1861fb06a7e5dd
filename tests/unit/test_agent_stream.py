from __future__ import annotations

import pytest

from wiremesh.agent.client import PeerDeleted
from wiremesh.agent.runner import ResyncNeeded, next_netmap
from wiremesh.core.netmap import Netmap, NetmapPeer, delta_to_json, diff, netmap_to_json

A = Netmap(version=3, peer_id=1, name="a", overlay_ip="100.64.0.1")
P = NetmapPeer("B" * 43 + "=", "b", "100.64.0.2", ("192.0.2.2:51820",))
B = Netmap(version=5, peer_id=1, name="a", overlay_ip="100.64.0.1", peers={P.public_key: P})


def test_full_replaces_what_is_held() -> None:
    assert next_netmap(None, {"type": "full", "netmap": netmap_to_json(B)}) == B
    assert next_netmap(A, {"type": "full", "netmap": netmap_to_json(B)}) == B


def test_delta_applies_only_to_its_base() -> None:
    msg = {"type": "delta", "delta": delta_to_json(diff(A, B))}
    assert next_netmap(A, msg) == B
    with pytest.raises(ResyncNeeded):
        next_netmap(B, msg)
    with pytest.raises(ResyncNeeded):
        next_netmap(None, msg)


def test_keepalive_changes_nothing_and_deletion_stops() -> None:
    assert next_netmap(A, {"type": "ping", "version": 3}) is None
    with pytest.raises(PeerDeleted):
        next_netmap(A, {"type": "deleted"})
