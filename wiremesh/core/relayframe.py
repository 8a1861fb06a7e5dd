"""Relay frames: 32 raw bytes of a WireGuard public key, then one WireGuard packet.

A client sends (destination key + packet); the relay delivers (source key + packet). The relay
never decrypts anything, but it refuses what cannot be a WireGuard packet at all (wrong type,
non-zero reserved bytes, too short or too long), so it cannot be used as a general-purpose
tunnel for other traffic.
"""

from __future__ import annotations

KEY_LEN = 32
MIN_PACKET = 32  # a keepalive: 16 bytes of header + a 16-byte empty AEAD tag
MAX_PACKET = 65535
MAX_FRAME = KEY_LEN + MAX_PACKET
WG_TYPES = frozenset({1, 2, 3, 4})  # initiation, response, cookie reply, transport data


class BadFrame(ValueError):
    """A frame that is not (key + WireGuard packet); the message names what is wrong."""


def check_packet(packet: bytes) -> None:
    if len(packet) < MIN_PACKET:
        raise BadFrame(f"packet of {len(packet)} bytes is shorter than any WireGuard message")
    if len(packet) > MAX_PACKET:
        raise BadFrame(f"packet of {len(packet)} bytes exceeds {MAX_PACKET}")
    if packet[0] not in WG_TYPES or packet[1:4] != b"\0\0\0":
        raise BadFrame("not a WireGuard message (type or reserved bytes)")


def pack(key: bytes, packet: bytes) -> bytes:
    if len(key) != KEY_LEN:
        raise BadFrame(f"a key is {KEY_LEN} bytes, got {len(key)}")
    return key + packet


def unpack(frame: bytes) -> tuple[bytes, bytes]:
    """(key, packet) of a frame; raises BadFrame."""
    if len(frame) > MAX_FRAME:
        raise BadFrame(f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    key, packet = frame[:KEY_LEN], frame[KEY_LEN:]
    if len(key) != KEY_LEN:
        raise BadFrame(f"frame of {len(frame)} bytes is shorter than a key")
    check_packet(packet)
    return key, packet
