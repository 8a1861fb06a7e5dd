"""The classic BPF program (run by a small interpreter here, by the kernel in e2e) and the
IP/UDP parsing behind it."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiremesh.gateway.sniffer import initiation_filter
from wiremesh.wg.tap import (
    ETH_P_IP,
    ETH_P_IPV6,
    PACKET_OUTGOING,
    SO_TIMESTAMP,
    PortSender,
    _arrival,
    not_wireguard_filter,
    parse_ip_udp,
    run_filter,
)

PORT = 51820
PAYLOAD = b"\x01\x00\x00\x00" + bytes(144)
PACKET_HOST = 0


def ipv4(payload: bytes = PAYLOAD, dport: int = PORT, proto: int = 17, frag: int = 0,
         options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(udp), 0, frag, 64, proto, 0,
                      bytes([198, 51, 100, 2]), bytes([198, 51, 100, 1]))
    return hdr + options + udp


def ipv6(payload: bytes = PAYLOAD, dport: int = PORT) -> bytes:
    udp = struct.pack("!HHHH", 40001, dport, 8 + len(payload), 0) + payload
    src = socket.inet_pton(socket.AF_INET6, "fd00::2")
    dst = socket.inet_pton(socket.AF_INET6, "fd00::1")
    return struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + src + dst + udp


PROG = initiation_filter(PORT)


def accepts(packet: bytes, proto: int = ETH_P_IP, pkttype: int = PACKET_HOST) -> bool:
    return run_filter(PROG, packet, pkttype, proto)


def test_accepts_initiations_v4_v6_and_with_ip_options() -> None:
    assert accepts(ipv4())
    assert accepts(ipv4(options=bytes(8)))
    assert accepts(ipv6(), proto=ETH_P_IPV6)


@pytest.mark.parametrize(("packet", "proto", "pkttype"), [
    (ipv4(dport=51821), ETH_P_IP, PACKET_HOST),
    (ipv4(payload=b"\x02" + bytes(147)), ETH_P_IP, PACKET_HOST),
    (ipv4(payload=b"\x04" + bytes(31)), ETH_P_IP, PACKET_HOST),
    (ipv4(payload=PAYLOAD + b"x"), ETH_P_IP, PACKET_HOST),
    (ipv4(proto=6), ETH_P_IP, PACKET_HOST),
    (ipv4(frag=0x2000), ETH_P_IP, PACKET_HOST),
    (ipv4(frag=0x0010), ETH_P_IP, PACKET_HOST),
    (ipv4(), ETH_P_IP, PACKET_OUTGOING),
    (ipv4(), 0x0806, PACKET_HOST),
    (ipv6(dport=1), ETH_P_IPV6, PACKET_HOST),
    (ipv4()[:28], ETH_P_IP, PACKET_HOST),  # too short to hold the message type
])
def test_rejects_everything_else(packet: bytes, proto: int, pkttype: int) -> None:
    assert not accepts(packet, proto, pkttype)


def test_parse_ip_udp_extracts_source_and_payload() -> None:
    cap = parse_ip_udp(ipv4(options=bytes(4)))
    assert (cap.payload, cap.src_addr, cap.src_port) == (PAYLOAD, bytes([198, 51, 100, 2]), 40000)
    cap6 = parse_ip_udp(ipv6())
    assert cap6.src_addr == socket.inet_pton(socket.AF_INET6, "fd00::2")
    assert cap6.src_port == 40001


@pytest.mark.parametrize("frame", [b"", b"\x45" + bytes(10), b"\x44" + bytes(200),
                                   b"\x75" + bytes(200), ipv4()[:-1]])
def test_parse_ip_udp_refuses_what_does_not_fit(frame: bytes) -> None:
    assert parse_ip_udp(frame) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=260), st.sampled_from([ETH_P_IP, ETH_P_IPV6, 0x0806]),
       st.sampled_from([PACKET_HOST, PACKET_OUTGOING]))
def test_fuzz_filter_and_parser_never_raise(frame: bytes, proto: int, pkttype: int) -> None:
    if run_filter(PROG, frame, pkttype, proto):
        cap = parse_ip_udp(frame)
        assert cap is not None and cap.payload[0] == 1 and len(cap.payload) == 148
    parse_ip_udp(frame)


@pytest.mark.parametrize(("payload", "passed"), [
    (bytes.fromhex("010100002112a442") + bytes(12), True),  # a STUN answer
    (b"WMD1" + bytes(60), True),
    (PAYLOAD, False),
    (b"\x02\x00\x00\x00" + bytes(88), False),
    (b"\x04\x00\x00\x00" + bytes(32), False),
    (b"\x01\x00", False),  # too short to tell
])
def test_not_wireguard_filter(payload: bytes, passed: bool) -> None:
    prog = not_wireguard_filter(PORT)
    assert run_filter(prog, ipv4(payload), PACKET_HOST, ETH_P_IP) == passed
    assert run_filter(prog, ipv6(payload), PACKET_HOST, ETH_P_IPV6) == passed
    assert not run_filter(prog, ipv4(payload, dport=PORT + 1), PACKET_HOST, ETH_P_IP)


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")
def test_port_sender_sends_from_the_port_and_receives_nothing() -> None:
    """Datagrams leave from the port another socket owns, through send-only raw sockets: a
    raw IPPROTO_UDP socket would get a copy of every UDP datagram the host receives."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        sender = PortSender(PORT)
        try:
            sender.sendto(b"probe", rx.getsockname())
            payload, (src, sport) = rx.recvfrom(64)
            assert sender.sender is not None
            protos = {s.proto for s in sender.sender._socks.values()}
        finally:
            sender.close()
    assert (payload, src, sport) == (b"probe", "127.0.0.1", PORT)
    assert protos == {socket.IPPROTO_RAW}


def test_arrival_time_comes_from_so_timestamp_ancillary_data() -> None:
    stamp = struct.pack("qq", 1_700_000_000, 250_000)
    assert _arrival([(socket.SOL_SOCKET, SO_TIMESTAMP, stamp)]) == 1_700_000_000.25
    # Without one (or another message) a packet is never taken for stale.
    assert _arrival([]) == float("inf")
    assert _arrival([(socket.SOL_IP, SO_TIMESTAMP, stamp)]) == float("inf")
