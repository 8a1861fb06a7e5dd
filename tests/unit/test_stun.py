"""STUN Binding codec (core/stun.py)."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wiremesh.core.stun import (
    Mapped,
    StunError,
    binding_request,
    binding_response,
    parse_request,
    parse_response,
)

TXID = bytes(range(12))


def test_rfc5769_ipv4_response_vector() -> None:
    """The sample IPv4 response of RFC 5769 2.2, reduced to its XOR-MAPPED-ADDRESS (the
    codec ignores SOFTWARE and the integrity attributes)."""
    txid = bytes.fromhex("b7e7a701bc34d686fa87dfae")
    attr = bytes.fromhex("00200008" "0001a147e112a643")
    msg = bytes.fromhex("0101000c2112a442") + txid + attr
    assert parse_response(msg) == (txid, Mapped("192.0.2.1", 32853))
    assert binding_response(txid, Mapped("192.0.2.1", 32853)) == msg


@given(st.binary(min_size=12, max_size=12),
       st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
       st.integers(0, 65535))
def test_response_roundtrip(txid: bytes, ip: ipaddress._BaseAddress, port: int) -> None:
    assert parse_response(binding_response(txid, Mapped(str(ip), port))) == (
        txid, Mapped(str(ip), port))


def test_request_roundtrip_and_junk_refused() -> None:
    assert parse_request(binding_request(TXID)) == TXID
    with pytest.raises(StunError, match="too short"):
        parse_request(b"\x00\x01")
    with pytest.raises(StunError, match="magic cookie"):
        parse_request(binding_request(TXID)[:4] + b"\0\0\0\0" + TXID)
    with pytest.raises(StunError, match="length"):
        parse_request(binding_request(TXID) + b"\0")
    with pytest.raises(StunError, match="not a Binding request"):
        parse_request(binding_response(TXID, Mapped("192.0.2.1", 1)))
    with pytest.raises(StunError, match="without XOR-MAPPED-ADDRESS"):
        parse_response(binding_request(TXID)[:0] + bytes.fromhex("010100002112a442") + TXID)
    # WireGuard's first bytes are never a STUN header (type 1..4 then three zero bytes).
    with pytest.raises(StunError):
        parse_response(bytes([1, 0, 0, 0]) + bytes(144))


@given(st.binary(max_size=80))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    for parse in (parse_request, parse_response):
        with contextlib.suppress(StunError):
            parse(data)
