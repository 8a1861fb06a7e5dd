"""STUN Binding (RFC 5389) with XOR-MAPPED-ADDRESS only: how an agent learns the public
address and port its WireGuard socket is mapped to (pure codec, no I/O).

Only what endpoint discovery needs: a Binding request without attributes, and a success
response carrying XOR-MAPPED-ADDRESS. Anything else is refused with StunError naming what is
wrong, so a responder can count and drop junk without a traceback.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

MAGIC = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
HEADER = struct.Struct("!HHI12s")
TXID_LEN = 12
MAX_ATTRS_LEN = 512  # a binding answer is tiny; more is junk


class StunError(ValueError):
    pass


@dataclass(frozen=True)
class Mapped:
    """A transport address: what the server saw as the source of a request."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


def _header(data: bytes) -> tuple[int, bytes, bytes]:
    if len(data) < HEADER.size:
        raise StunError(f"STUN message too short ({len(data)} bytes, header is 20)")
    mtype, length, cookie, txid = HEADER.unpack_from(data)
    if mtype & 0xC000:
        raise StunError("not a STUN message (top two bits of the type are set)")
    if cookie != MAGIC:
        raise StunError("not a STUN message (wrong magic cookie)")
    if length % 4 or length > MAX_ATTRS_LEN or HEADER.size + length != len(data):
        raise StunError(f"bad STUN length {length} for a {len(data)}-byte message")
    return mtype, txid, data[HEADER.size:]


def binding_request(txid: bytes) -> bytes:
    if len(txid) != TXID_LEN:
        raise StunError("a transaction id is 12 bytes")
    return HEADER.pack(BINDING_REQUEST, 0, MAGIC, txid)


def parse_request(data: bytes) -> bytes:
    """The transaction id of a Binding request (attributes, if any, are ignored)."""
    mtype, txid, _ = _header(data)
    if mtype != BINDING_REQUEST:
        raise StunError(f"not a Binding request (type {mtype:#06x})")
    return txid


def _xor_address(mapped: Mapped, txid: bytes) -> bytes:
    ip = ipaddress.ip_address(mapped.ip)
    if not 0 <= mapped.port <= 0xFFFF:
        raise StunError(f"port {mapped.port} out of range")
    mask = struct.pack("!I", MAGIC) + (txid if ip.version == 6 else b"")
    xaddr = bytes(a ^ b for a, b in zip(ip.packed, mask, strict=False)) + ip.packed[len(mask):]
    family = 0x01 if ip.version == 4 else 0x02
    return struct.pack("!BBH", 0, family, mapped.port ^ (MAGIC >> 16)) + xaddr


def binding_response(txid: bytes, mapped: Mapped) -> bytes:
    value = _xor_address(mapped, txid)
    attr = struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value
    return HEADER.pack(BINDING_SUCCESS, len(attr), MAGIC, txid) + attr


def parse_response(data: bytes) -> tuple[bytes, Mapped]:
    """(transaction id, mapped address) of a Binding success response."""
    mtype, txid, attrs = _header(data)
    if mtype != BINDING_SUCCESS:
        raise StunError(f"not a Binding success response (type {mtype:#06x})")
    off = 0
    while off + 4 <= len(attrs):
        atype, alen = struct.unpack_from("!HH", attrs, off)
        value = attrs[off + 4:off + 4 + alen]
        if len(value) != alen:
            raise StunError("STUN attribute runs past the message")
        if atype == XOR_MAPPED_ADDRESS:
            return txid, _parse_xor_address(value, txid)
        off += 4 + alen + (-alen % 4)
    raise StunError("Binding response without XOR-MAPPED-ADDRESS")


def _parse_xor_address(value: bytes, txid: bytes) -> Mapped:
    if len(value) not in (8, 20):
        raise StunError(f"XOR-MAPPED-ADDRESS of {len(value)} bytes")
    _, family, xport = struct.unpack_from("!BBH", value)
    size = {0x01: 4, 0x02: 16}.get(family)
    if size is None or len(value) != 4 + size:
        raise StunError(f"XOR-MAPPED-ADDRESS with family {family:#x} and {len(value)} bytes")
    mask = struct.pack("!I", MAGIC) + txid
    raw = bytes(a ^ b for a, b in zip(value[4:], mask, strict=False))
    return Mapped(str(ipaddress.ip_address(raw)), xport ^ (MAGIC >> 16))
