from __future__ import annotations

import base64
import json
from dataclasses import fields, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wiremesh.core.models import PortRange
from wiremesh.core.netmap import (
    DIGESTED,
    DeltaMismatch,
    SharedPeersDiff,
    apply_delta,
    diff,
    digest,
)
from wiremesh.core.wire import (
    DeltaMessage,
    ForwardRule,
    FullMessage,
    InboundRule,
    Netmap,
    NetmapPeer,
    RouteEntry,
    encode_message,
    parse_message,
)

keys_ = st.sampled_from([base64.b64encode(bytes([i]) * 32).decode() for i in range(1, 9)])
ips = st.sampled_from([f"100.64.0.{i}" for i in range(1, 9)])
peers = st.builds(NetmapPeer, keys_, st.sampled_from(["a", "b", "c"]), ips,
                  st.tuples(st.sampled_from(["192.0.2.1:51820", "192.0.2.2:51820"])))
rules = st.builds(InboundRule, ips, st.sampled_from(["all", "tcp", "udp", "icmp"]),
                  st.sampled_from([(), (PortRange(22, 22),), (PortRange(80, 90),)]))
fwd = st.builds(ForwardRule, ips, st.just("198.18.1.0/24"), st.sampled_from(["all", "tcp"]))
routes = st.builds(RouteEntry, st.sampled_from(["r1", "r2"]), st.just("198.18.1.0/24"),
                   st.lists(st.tuples(keys_, st.integers(1, 500)), max_size=3).map(tuple))


@st.composite
def netmaps(draw, version: int) -> Netmap:
    ps = draw(st.lists(peers, max_size=6))
    rs = draw(st.lists(routes, max_size=2))
    return Netmap(
        version=version, peer_id=1, name=draw(st.sampled_from(["me", "me2"])),
        overlay_ip="100.64.0.1", peers={p.public_key: p for p in ps},
        inbound=frozenset(draw(st.lists(rules, max_size=6))),
        routes={r.name: r for r in rs}, forward=frozenset(draw(st.lists(fwd, max_size=3))),
        masquerade=frozenset(draw(st.sets(st.sampled_from(["198.18.1.0/24"])))),
        relays=draw(st.sampled_from([(), ("/api/v1/relay",),
                                     ("wss://r1.example:8443/api/v1/relay", "/api/v1/relay")])),
        mtu=draw(st.sampled_from([1200, 1420, 9000])),  # the hub always sends one
    )


@given(netmaps(1), netmaps(2))
def test_diff_then_apply_gives_new(old: Netmap, new: Netmap) -> None:
    d = diff(old, new)
    assert apply_delta(old, d) == new
    # The wire form carries the same delta.
    msg = parse_message(encode_message(DeltaMessage(delta=d)))
    assert isinstance(msg, DeltaMessage)
    assert apply_delta(old, msg.delta) == new


@given(st.lists(st.tuples(netmaps(1), netmaps(2), st.booleans()), min_size=1, max_size=6))
def test_shared_peer_diff_is_the_diff(pairs: list[tuple[Netmap, Netmap, bool]]) -> None:
    """Netmaps sharing peer tables (by identity, as the compiler's do), diffed with one
    SharedPeersDiff, get the deltas they get alone: a table pair is never mixed up with
    another."""
    first_old, first_new, _ = pairs[0]
    maps = [(replace(old, peers=first_old.peers), replace(new, peers=first_new.peers))
            if share else (old, new) for old, new, share in pairs]
    shared = SharedPeersDiff()
    for old, new in maps:
        assert diff(old, new, shared) == diff(old, new)
        assert apply_delta(old, diff(old, new, shared)) == new


@given(netmaps(3))
def test_wire_roundtrip(n: Netmap) -> None:
    msg = parse_message(encode_message(FullMessage(netmap=n)))
    assert isinstance(msg, FullMessage) and msg.netmap == n


@given(netmaps(4))
def test_diff_of_same_content_is_empty(n: Netmap) -> None:
    assert diff(n, n).empty


def test_delta_only_applies_to_its_base() -> None:
    a = Netmap(version=1, peer_id=1, name="a", overlay_ip="100.64.0.1")
    b = Netmap(version=2, peer_id=1, name="a", overlay_ip="100.64.0.1")
    with pytest.raises(DeltaMismatch):
        apply_delta(b, diff(a, b))


def test_delta_carries_only_changes() -> None:
    k1, k2 = (base64.b64encode(bytes([i]) * 32).decode() for i in (1, 2))
    p1 = NetmapPeer(k1, "x", "100.64.0.2", ("192.0.2.2:51820",))
    p2 = NetmapPeer(k2, "y", "100.64.0.3", ("192.0.2.3:51820",))
    a = Netmap(version=1, peer_id=1, name="a", overlay_ip="100.64.0.1",
               peers={p1.public_key: p1, p2.public_key: p2})
    moved = NetmapPeer(p2.public_key, "y", "100.64.0.3", ("192.0.2.9:51820",))
    b = Netmap(version=2, peer_id=1, name="a", overlay_ip="100.64.0.1",
               peers={p1.public_key: p1, moved.public_key: moved})
    d = json.loads(encode_message(DeltaMessage(delta=diff(a, b))))["delta"]
    assert {k: v for k, v in d.items() if v not in ([], None)} == {
        "from_version": 1, "to_version": 2, "upsert_peers": [
            {"public_key": moved.public_key, "name": "y", "overlay_ip": "100.64.0.3",
             "endpoints": ["192.0.2.9:51820"]}]}


@given(netmaps(5), netmaps(6))
def test_digest_is_content_not_version_nor_order(a: Netmap, b: Netmap) -> None:
    """Equal content, equal digest, whatever the version and however the wire reordered
    sets and maps; different content, different digest."""
    msg = parse_message(encode_message(FullMessage(netmap=a)))
    assert isinstance(msg, FullMessage)
    back = replace(msg.netmap, version=9, peers=dict(reversed(msg.netmap.peers.items())))
    assert digest(back) == digest(a)
    assert (digest(a) == digest(b)) == (replace(a, version=0) == replace(b, version=0))


@given(st.lists(netmaps(1), min_size=1, max_size=4))
def test_digest_with_a_memo_is_the_digest(nms: list[Netmap]) -> None:
    """The hub's memo of shared tables changes no digest, whichever netmap shares which
    peer table or rule set (the same objects, as the compiler hands them out)."""
    shared = [replace(nm, peers=nms[0].peers) for nm in nms]
    shared += [replace(nm, inbound=nms[-1].inbound) for nm in nms]
    memo: dict[int, tuple[object, str]] = {}
    for nm in [*nms, *shared, *nms]:
        assert digest(nm, memo) == digest(nm)


def test_digest_is_what_agents_of_earlier_versions_compute() -> None:
    # Agents and replicas of other versions send and compare digests: the value for a given
    # netmap must not change (this one was computed before the memo existed).
    k1, k2 = (base64.b64encode(bytes([i]) * 32).decode() for i in (1, 2))
    nm = Netmap(
        version=3, peer_id=1, name="a", overlay_ip="100.64.0.1",
        peers={k: NetmapPeer(k, n, ip, ("192.0.2.2:51820",))
               for k, n, ip in ((k1, "x", "100.64.0.2"), (k2, "y", "100.64.0.3"))},
        inbound=frozenset({InboundRule("100.64.0.2", "tcp",
                                       (PortRange(22, 22), PortRange(80, 90)))}),
        routes={"r1": RouteEntry("r1", "198.18.1.0/24", ((k1, 100),))},
        forward=frozenset({ForwardRule("100.64.0.3", "198.18.1.0/24", "all")}),
        masquerade=frozenset({"198.18.1.0/24"}), relays=("/api/v1/relay",), mtu=1420)
    assert digest(nm) == "959ec5a4be6a2da6c4295acf3a075d23"


def test_digest_covers_every_netmap_field() -> None:
    assert tuple(f.name for f in fields(Netmap)) == DIGESTED
