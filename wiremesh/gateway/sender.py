"""Send UDP datagrams from the WireGuard listen port, which wireguard-go owns.

The gateway only taps copies of packets, so it has no socket on that port; cookie replies must
still come from it (the initiator matches the reply to its handshake by index, but firewalls
and NATs on the way only let through what comes back from the address and port it sent to).
A raw socket with a header we build ourselves does that without touching wireguard-go's
socket: IPPROTO_RAW implies IP_HDRINCL on Linux, for IPv4 and IPv6 alike, and is send-only,
so nothing queues on it.
"""

from __future__ import annotations

import socket
import struct

IPPROTO_UDP = 17
_TTL = 64


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_datagram(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """A whole IPv4 or IPv6 packet (by address length) carrying one UDP datagram with a
    correct checksum; the kernel fills in the IPv4 header checksum."""
    length = 8 + len(payload)
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, IPPROTO_UDP, length)
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + length, 0, 0x4000, _TTL, IPPROTO_UDP, 0)
        ip += src + dst
    else:
        pseudo = src + dst + struct.pack("!I3xB", length, IPPROTO_UDP)
        ip = struct.pack("!IHBB", 6 << 28, length, IPPROTO_UDP, _TTL) + src + dst
    udp = struct.pack("!HHHH", sport, dport, length, 0) + payload
    csum = _checksum(pseudo + udp) or 0xFFFF  # 0 means "no checksum" in UDP
    return ip + udp[:6] + struct.pack("!H", csum) + udp[8:]


class UdpSender:
    def __init__(self) -> None:
        self._socks: dict[int, socket.socket] = {}
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                self._socks[family] = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except BaseException:
            self.close()
            raise

    def send(self, payload: bytes, src: bytes, sport: int, dst: bytes, dport: int) -> None:
        """From src:sport (an address of this host) to dst:dport; raises OSError."""
        family = socket.AF_INET if len(dst) == 4 else socket.AF_INET6
        packet = udp_datagram(src, dst, sport, dport, payload)
        self._socks[family].sendto(packet, (socket.inet_ntop(family, dst), 0))

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()
