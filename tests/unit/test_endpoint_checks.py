"""Endpoints a peer may give other peers (core/wire.py `check_peer_endpoint`): the one rule
for what agents report, what the server keeps and what agents take from a netmap."""

from __future__ import annotations

import base64
import ipaddress
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wiremesh.core.ipam import OVERLAY_NET
from wiremesh.core.wire import (
    NETMAP,
    BadMessage,
    FullMessage,
    Netmap,
    NetmapPeer,
    check_endpoint,
    check_peer_endpoint,
    encode_message,
    endpoint_problem,
    parse_message,
)
from wiremesh.server.schemas import EndpointReport
from wiremesh.wg.backend import WgPeerConfig

KEY = base64.b64encode(bytes([7]) * 32).decode()


@pytest.mark.parametrize("bad,why", [
    ("192.0.2.1:0", "port must be 1..65535"),
    ("[fd00::1]", "expected [IPv6]:PORT"),
    ("0.0.0.0:1", "unspecified"),
    ("0.1.2.3:51820", "unspecified"),
    ("0.0.0.0", "unspecified"),
    ("[::]:51820", "unspecified"),
    ("255.255.255.255:1", "broadcast"),
    ("224.0.0.1:5", "multicast"),  # link-local multicast (224.0.0.0/24)
    ("239.255.255.250:1900", "multicast"),
    ("[ff02::1]:5", "multicast"),  # link-local multicast
    ("[ff0e::1]:5", "multicast"),
    ("127.0.0.1:9", "loopback"),
    ("127.1.2.3:51820", "loopback"),
    ("127.0.0.1", "loopback"),  # bare: the peer's listen port on every other peer's host
    ("[::1]:51820", "loopback"),
    ("[::ffff:127.0.0.1]:9", "loopback"),
    ("100.64.0.3:51820", "overlay"),
    ("100.64.0.0:1", "overlay"),
    ("100.127.255.255:1", "overlay"),
    ("[::ffff:100.64.0.3]:51820", "overlay"),
    ("[fe80::1]:51820", "link-local"),
])
def test_endpoints_no_peer_can_be_sent_to_are_refused(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)) as e:
        check_peer_endpoint(bad)
    assert repr(bad) in str(e.value)  # the message names the value


@pytest.mark.parametrize("good,canonical", [
    ("[fd00::1]:51820", "[fd00::1]:51820"),
    ("[FD00:0::1]:51820", "[fd00::1]:51820"),
    ("198.51.100.7:51820", "198.51.100.7:51820"),
    ("192.168.1.20:51820", "192.168.1.20:51820"),
    ("10.1.2.3:1", "10.1.2.3:1"),
    ("172.16.0.1:65535", "172.16.0.1:65535"),
    ("100.63.255.255:51820", "100.63.255.255:51820"),  # just below the overlay
    ("100.128.0.0:51820", "100.128.0.0:51820"),  # just above it
    ("169.254.10.1:51820", "169.254.10.1:51820"),  # IPv4 link-local works on the link
    ("[2001:db8::7]:4000", "[2001:db8::7]:4000"),
    ("[::ffff:198.51.100.7]:1", "[::ffff:c633:6407]:1"),
    ("255.255.255.254:1", "255.255.255.254:1"),
    # Bare: the peer's listen port (the server adds it when it builds netmaps).
    ("198.51.100.7", "198.51.100.7"),
    ("fd00::1", "fd00::1"),
])
def test_endpoints_peers_can_use_are_accepted(good: str, canonical: str) -> None:
    assert check_peer_endpoint(good) == canonical
    assert endpoint_problem(canonical) is None


def test_wireguard_itself_may_still_be_given_a_loopback_endpoint() -> None:
    # The agent's relay link hands wireguard-go a loopback socket of its own per peer.
    assert check_endpoint("127.0.0.1:40000") == "127.0.0.1:40000"
    assert WgPeerConfig(KEY, (), "127.0.0.1:40000").endpoint == "127.0.0.1:40000"


@given(st.ip_addresses(v=4), st.integers(1, 65535))
def test_the_ipv4_fast_path_agrees_with_ipaddress(ip: ipaddress.IPv4Address, port: int) -> None:
    unusable = (ip in ipaddress.ip_network("0.0.0.0/8") or ip.is_loopback or ip.is_multicast
                or ip == ipaddress.IPv4Address("255.255.255.255") or ip in OVERLAY_NET)
    assert (endpoint_problem(f"{ip}:{port}") is not None) == unusable
    assert (endpoint_problem(f"[::ffff:{ip}]:{port}") is not None) == unusable


def _peer_line(endpoints: list[str]) -> str:
    peer = NetmapPeer(KEY, "b", "100.64.0.2", ("198.51.100.7:51820",))
    msg = json.loads(encode_message(FullMessage(netmap=Netmap(
        version=1, peer_id=1, name="a", overlay_ip="100.64.0.1", peers={KEY: peer}))))
    msg["netmap"]["peers"][0]["endpoints"] = endpoints
    return json.dumps(msg)


def test_a_netmap_peer_keeps_only_endpoints_it_can_be_sent_to() -> None:
    line = _peer_line(["127.0.0.1:9", "100.64.0.3:51820", "198.51.100.7:51820", "0.0.0.0:1",
                       "[ff02::1]:5", "255.255.255.255:1", "[fd00::1]:51820", "224.0.0.1:5"])
    nm = parse_message(line).netmap  # type: ignore[union-attr]
    assert nm.peers[KEY].endpoints == ("198.51.100.7:51820", "[fd00::1]:51820")
    # The netmap an agent saved is read back by the same rule.
    saved = json.loads(line)["netmap"]
    assert NETMAP.validate_python(saved).peers[KEY].endpoints == nm.peers[KEY].endpoints


def test_a_netmap_with_a_malformed_endpoint_is_still_refused() -> None:
    for bad in ["192.0.2.1:1\nremove=true", "192.0.2.1:0", "host:1"]:
        with pytest.raises(BadMessage, match=r"endpoints\.0: .*bad endpoint"):
            parse_message(_peer_line(["198.51.100.7:51820", bad][::-1]))


@given(st.ip_addresses(), st.integers(1, 65535))
def test_report_and_netmap_follow_one_rule(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                           port: int) -> None:
    """What the server refuses in a report is exactly what an agent leaves out of a netmap."""
    ep = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    try:
        check_peer_endpoint(ep)
        reported = True
    except ValueError:
        reported = False
    kept = parse_message(_peer_line([ep])).netmap.peers[KEY].endpoints  # type: ignore[union-attr]
    assert kept == ((check_endpoint(ep),) if reported else ())


def test_unusable_candidates_are_left_out_of_a_report() -> None:
    # An agent reports every global address of its interfaces: another VPN's in
    # 100.64.0.0/10 (Tailscale's) must not make its whole report fail.
    report = EndpointReport.model_validate({"listen_port": 51820, "candidates": [
        {"endpoint": "100.101.102.103:51820", "kind": "local"},
        {"endpoint": "192.168.1.20:51820", "kind": "local"},
        {"endpoint": "127.0.0.1:51820", "kind": "mapped"},
        {"endpoint": "203.0.113.9:40001", "kind": "mapped"}]})
    assert report.ordered() == ["203.0.113.9:40001", "192.168.1.20:51820"]
    # Configured endpoints are the operator's: refused, naming the entry.
    with pytest.raises(ValueError, match=r"endpoints\.1\n.*'127\.0\.0\.1:1'.*loopback"):
        EndpointReport.model_validate({"listen_port": 51820,
                                       "endpoints": ["198.51.100.7:1", "127.0.0.1:1"]})
