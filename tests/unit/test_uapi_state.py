from __future__ import annotations

import stat

import pytest

from wiremesh.agent import state as statefile
from wiremesh.agent.dataplane import desired_peers
from wiremesh.agent.state import AgentConfig, AgentState
from wiremesh.core.wire import Netmap, NetmapPeer
from wiremesh.wg.backend import WgError, WgPeerConfig
from wiremesh.wg.keys import generate_private_key, key_to_hex, public_key_of
from wiremesh.wg.uapi import parse_get, render_set

K1 = public_key_of(generate_private_key())
K2 = public_key_of(generate_private_key())


def test_render_set_one_write_for_all_changes() -> None:
    body = render_set([WgPeerConfig(K1, ("100.64.0.2/32", "198.18.1.0/24"), "192.0.2.2:51820",
                                    25)], [K2])
    lines = body.splitlines()
    assert lines[0] == "set=1" and body.endswith("\n\n")
    assert lines[1:3] == [f"public_key={key_to_hex(K2)}", "remove=true"]
    assert "replace_allowed_ips=true" in lines
    assert lines[-3:] == ["allowed_ip=100.64.0.2/32", "allowed_ip=198.18.1.0/24", ""]
    assert "endpoint=192.0.2.2:51820" in lines


def test_parse_get() -> None:
    text = (f"private_key={'0' * 64}\nlisten_port=51820\npublic_key={key_to_hex(K1)}\n"
            "endpoint=192.0.2.2:51820\nlast_handshake_time_sec=100\n"
            "last_handshake_time_nsec=500000000\nrx_bytes=10\ntx_bytes=20\n"
            "persistent_keepalive_interval=25\nallowed_ip=100.64.0.2/32\n"
            f"public_key={key_to_hex(K2)}\nlast_handshake_time_sec=0\n"
            "last_handshake_time_nsec=0\nerrno=0\n\n")
    dev = parse_get(text)
    assert dev.listen_port == 51820
    p = dev.peers[K1]
    assert (p.endpoint, p.last_handshake, p.rx_bytes, p.allowed_ips) == (
        "192.0.2.2:51820", 100.5, 10, ["100.64.0.2/32"])
    assert dev.peers[K2].last_handshake == 0.0
    with pytest.raises(WgError):
        parse_get("errno=22\n\n")


def test_desired_peers_adds_extra_allowed_ips() -> None:
    nm = Netmap(version=1, peer_id=1, name="a", overlay_ip="100.64.0.1",
                peers={K1: NetmapPeer(K1, "r", "100.64.0.2", ("192.0.2.2:51820",))})
    want = desired_peers(nm, lambda k: ("198.18.1.0/24",) if k == K1 else ())
    assert want[K1].allowed_ips == ("100.64.0.2/32", "198.18.1.0/24")
    assert want[K1].endpoint == "192.0.2.2:51820"


def test_state_file_roundtrip_and_mode(tmp_path) -> None:
    cfg = AgentConfig("http://192.0.2.1:8080", 1, "a", "wmp_x", "100.64.0.1", 10, "wm0", 51820,
                      [])
    nm = Netmap(version=7, peer_id=1, name="a", overlay_ip="100.64.0.1")
    statefile.save(tmp_path, AgentState(cfg, nm))
    path = tmp_path / "state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = statefile.load(tmp_path)
    assert back.config == cfg and back.netmap == nm


def test_state_file_errors_are_clear(tmp_path) -> None:
    with pytest.raises(statefile.StateError, match="enrol first"):
        statefile.load(tmp_path)
    (tmp_path / "state.json").write_text("{broken")
    with pytest.raises(statefile.StateError, match="unreadable"):
        statefile.load(tmp_path)


def test_only_one_side_of_a_new_pair_initiates_at_once(monkeypatch) -> None:
    """Both sides adding each other at once must not both start a handshake (they would
    cross and stall for 5 s): the smaller key holds the endpoint back, then re-creates the
    peer (fresh handshake state) if no handshake completed meanwhile."""
    from wiremesh.agent import dataplane
    from wiremesh.agent.dataplane import DataPlane
    from wiremesh.core.contact import initiates
    from wiremesh.wg.backend import WgDeviceStatus, WgPeerStatus
    from wiremesh.wg.keys import decode_key

    monkeypatch.setattr(dataplane.nft, "apply", lambda *a, **k: None)
    monkeypatch.setattr(dataplane, "set_link_mtu", lambda *a: None)

    class Recorder:
        ifname = "wm0"

        def __init__(self) -> None:
            self.writes: list[tuple[list[WgPeerConfig], list[str]]] = []
            self.handshake = 0.0

        def set_peers(self, upsert, remove, replace_all=False) -> None:
            self.writes.append((upsert, remove))

        def status(self) -> WgDeviceStatus:
            return WgDeviceStatus(None, 51820, {K2: WgPeerStatus(K2,
                                                                 last_handshake=self.handshake)})

    nm = Netmap(version=1, peer_id=1, name="a", overlay_ip="100.64.0.1",
                peers={K2: NetmapPeer(K2, "b", "100.64.0.2", ("192.0.2.2:51820",))})
    sides: dict[bool, DataPlane] = {}
    while len(sides) < 2:
        cfg = AgentConfig("http://192.0.2.1:8080", 1, "a", "t", "100.64.0.1", 10, "wm0", 51820,
                          [])
        dp = DataPlane(Recorder(), cfg, generate_private_key())  # type: ignore[arg-type]
        dp.apply(nm)
        sides[initiates(decode_key(dp.public_key), decode_key(K2))] = dp
    for starts, dp in sides.items():
        peer = dp.backend.writes[-1][0][0]
        assert (peer.persistent_keepalive, peer.endpoint) == (
            (25, "192.0.2.2:51820") if starts else (0, None))
        assert (dp.next_due() is None) == starts
    held = sides[False]
    held.contact.pending[K2].due = 0.0  # due now, no handshake yet: re-create, initiating
    held.sync_peers(nm)
    upsert, remove = held.backend.writes[-1]
    assert remove == [K2] and upsert[0].persistent_keepalive == 25
    assert upsert[0].endpoint == "192.0.2.2:51820"
    held.backend.handshake = 1.0
    held.contact.pending[K2].due = 0.0  # a handshake came: left alone for good
    held.sync_peers(nm)
    assert held.backend.writes[-1] == ([], []) and held.next_due() is None


def test_with_keepalive_changes_only_the_keepalive_and_checks_it() -> None:
    peer = WgPeerConfig(K1, ("100.64.0.2/32",), "192.0.2.2:51820", 25)
    off = peer.with_keepalive(0)
    assert off == WgPeerConfig(K1, ("100.64.0.2/32",), "192.0.2.2:51820", 0)
    assert peer.persistent_keepalive == 25
    for bad in (-1, 65536, True):
        with pytest.raises(WgError, match="keepalive"):
            peer.with_keepalive(bad)
