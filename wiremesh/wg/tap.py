"""Passive taps on a UDP port: an AF_PACKET socket + a classic BPF filter; and sending from
that port without owning it.

WireGuard owns its UDP socket (wireguard-go or the kernel), yet the JIT gateway must see the
handshake initiations arriving at that port for keys it has not installed yet
(gateway/sniffer.py). A packet socket is a copy on the side: WireGuard keeps receiving
everything directly, the tap only ever slows itself down, and the kernel-side BPF program
wakes it for nothing but the packets it asked for. It needs no firewall rules and sits before
netfilter, but the kernel clones every received packet of its protocol for it, so the agent,
which only needs the answers to what it sends from the WireGuard port, uses an nftables rule
instead (firewall/side.py) and only the sender here.
"""

from __future__ import annotations

import ctypes
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import NamedTuple

from wiremesh.gateway.sender import UdpSender

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_TIMESTAMP = 29  # SO_TIMESTAMP_OLD: a struct timeval (two 64-bit longs here)
_TIMEVAL_SPACE = socket.CMSG_SPACE(16)
_SKF_AD_OFF = -0x1000
_SKF_AD_PROTOCOL = 0
_SKF_AD_PKTTYPE = 4

# Classic BPF opcodes (linux/filter.h).
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_LD_W_IND, _LD_H_IND, _LD_B_IND = 0x40, 0x48, 0x50
_LDX_B_MSH = 0xB1
_JEQ_K, _JSET_K = 0x15, 0x45
_RET_K = 0x06

Insn = tuple[int, int, str | None, str | None]  # code, k, jump-if-true label, jump-if-false label


def _assemble(program: list[Insn | str]) -> list[tuple[int, int, int, int]]:
    """Resolve labels (bare strings in the list) into relative jump offsets."""
    labels: dict[str, int] = {}
    insns: list[Insn] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    out = []
    for i, (code, k, jt, jf) in enumerate(insns):
        rel_t = labels[jt] - i - 1 if jt else 0
        rel_f = labels[jf] - i - 1 if jf else 0
        out.append((code, rel_t, rel_f, k & 0xFFFFFFFF))
    return out


Load = Callable[[int, int], Insn]  # (size 1/2/4, offset from the UDP header) -> a load


def udp_port_filter(port: int, checks: Callable[[Load], list[Insn | str]]
                    ) -> list[tuple[int, int, int, int]]:
    """BPF for a SOCK_DGRAM packet socket (data starts at the IP header): incoming,
    unfragmented IPv4/IPv6 UDP to `port` that passes `checks`. `checks(load)` returns the
    instructions testing the UDP header and payload, built with `load(size, offset)` and
    jumping to the labels "ok" or "drop". Returns (code, jt, jf, k) tuples."""
    ok, drop = "ok", "drop"

    def load_v4(size: int, off: int) -> Insn:
        return ({1: _LD_B_IND, 2: _LD_H_IND, 4: _LD_W_IND}[size], off, None, None)

    def load_v6(size: int, off: int) -> Insn:  # no extension headers: WireGuard sends none
        return ({1: _LD_B_ABS, 2: _LD_H_ABS, 4: _LD_W_ABS}[size], 40 + off, None, None)

    return _assemble([
        (_LD_B_ABS, _SKF_AD_OFF + _SKF_AD_PKTTYPE, None, None),
        (_JEQ_K, PACKET_OUTGOING, drop, None),
        (_LD_W_ABS, _SKF_AD_OFF + _SKF_AD_PROTOCOL, None, None),
        (_JEQ_K, ETH_P_IP, "v4", None),
        (_JEQ_K, ETH_P_IPV6, "v6", drop),
        "v4",
        (_LD_B_ABS, 9, None, None),
        (_JEQ_K, socket.IPPROTO_UDP, None, drop),
        (_LD_H_ABS, 6, None, None),
        (_JSET_K, 0x3FFF, drop, None),  # any fragment
        (_LDX_B_MSH, 0, None, None),  # X = IPv4 header length
        load_v4(2, 2),
        (_JEQ_K, port, None, drop),
        *checks(load_v4),
        "v6",
        (_LD_B_ABS, 6, None, None),
        (_JEQ_K, socket.IPPROTO_UDP, None, drop),
        load_v6(2, 2),
        (_JEQ_K, port, None, drop),
        *checks(load_v6),
        ok,
        (_RET_K, 0xFFFF, None, None),
        drop,
        (_RET_K, 0, None, None),
    ])


def not_wireguard_filter(port: int) -> list[tuple[int, int, int, int]]:
    """UDP to `port` whose payload does not start like a WireGuard message (type 1-4 and
    three zero bytes): what the agent sends from its WireGuard port gets answered with."""
    return udp_port_filter(port, lambda load: [
        load(4, 8),
        (_JEQ_K, 0x01000000, "drop", None),
        (_JEQ_K, 0x02000000, "drop", None),
        (_JEQ_K, 0x03000000, "drop", None),
        (_JEQ_K, 0x04000000, "drop", "ok"),
    ])


def run_filter(program: list[tuple[int, int, int, int]], packet: bytes, pkttype: int,
               protocol: int) -> bool:
    """A tiny interpreter for the opcodes above, so the filter is unit-tested without root."""
    a = x = 0
    pc = 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        sk = k - (1 << 32) if k & 0x80000000 else k
        if code in (_LD_W_ABS, _LD_B_ABS) and sk < 0:
            a = {_SKF_AD_PKTTYPE: pkttype, _SKF_AD_PROTOCOL: protocol}[sk - _SKF_AD_OFF]
        elif code in (_LD_W_ABS, _LD_B_ABS, _LD_H_ABS, _LD_W_IND, _LD_B_IND, _LD_H_IND):
            off = k + (x if code in (_LD_W_IND, _LD_B_IND, _LD_H_IND) else 0)
            size = {_LD_B_ABS: 1, _LD_B_IND: 1, _LD_H_ABS: 2, _LD_H_IND: 2}.get(code, 4)
            if off + size > len(packet):
                return False  # the kernel aborts with "drop" on out-of-bounds loads too
            a = int.from_bytes(packet[off:off + size], "big")
        elif code == _LDX_B_MSH:
            if k >= len(packet):
                return False
            x = (packet[k] & 0x0F) * 4
        elif code == _JEQ_K:
            pc += jt if a == k else jf
        elif code == _JSET_K:
            pc += jt if a & k else jf
        elif code == _RET_K:
            return k != 0
        else:
            raise ValueError(f"opcode {code:#x} not interpreted")


class Captured(NamedTuple):
    """One per packet read: a named tuple, built at C speed (frozen dataclasses' __init__,
    this one and the verdicts, were 8 % of the gateway's CPU under a 20,000 packets/s flood).
    """

    payload: bytes
    src_addr: bytes  # 4 or 16 bytes
    src_port: int
    dst_addr: bytes  # the address it was sent to (the gateway answers from it)


def parse_ip_udp(frame: bytes | memoryview) -> Captured | None:
    """IP header onwards -> the UDP payload and its source, or None if it does not fit."""
    if len(frame) < 20:
        return None
    version = frame[0] >> 4
    if version == 4:
        udp = (frame[0] & 0x0F) * 4
        if udp < 20:
            return None
        src, dst = frame[12:16], frame[16:20]
    elif version == 6:
        udp, src, dst = 40, frame[8:24], frame[24:40]
    else:
        return None
    if len(frame) < udp + 8:
        return None
    sport, ulen = struct.unpack_from("!H2xH", frame, udp)
    end = udp + ulen
    if ulen < 8 or len(frame) < end:
        return None
    return Captured(bytes(frame[udp + 8:end]), bytes(src), sport, bytes(dst))


class PacketTap:
    """Packet sockets for IPv4 and IPv6; `read()` returns what arrived, in batches, without
    blocking long.

    Each socket is bound to one protocol rather than ETH_P_ALL: a protocol socket sees only
    received packets, while an ETH_P_ALL socket gets a clone of every packet the namespace
    *sends* too (the kernel clones before the filter can refuse it). On a tunnel busy sending,
    that clone cost the agents several percent of their throughput."""

    def __init__(self, prog: list[tuple[int, int, int, int]], ifname: str | None = None,
                 rcvbuf: int = 32 << 20, max_age: float | None = None) -> None:
        """`max_age`: packets that waited longer than this in a socket's queue are skipped
        unread (counted in `stale`): when the reader falls behind, what it answers first is
        what arrived last, not what its sender gave up on seconds ago."""
        self.max_age = max_age
        self.stale = 0
        self.socks: list[socket.socket] = []
        try:
            for proto in (ETH_P_IP, ETH_P_IPV6):
                self.socks.append(_open(prog, proto, ifname, rcvbuf, max_age is not None))
        except BaseException:
            self.close()
            raise
        self._poll = select.poll()
        for sock in self.socks:
            self._poll.register(sock, select.POLLIN)
        self._buf = bytearray(2048)

    def filenos(self) -> list[int]:
        return [sock.fileno() for sock in self.socks]

    def read(self, timeout: float, max_batch: int = 512) -> list[Captured]:
        if not self._poll.poll(int(timeout * 1000)):
            return []
        out = []
        view = memoryview(self._buf)
        oldest = None if self.max_age is None else time.time() - self.max_age
        for sock in self.socks:
            for _ in range(max_batch):
                try:
                    if oldest is None:
                        n = sock.recv_into(self._buf)
                    else:
                        n, anc, _flags, _addr = sock.recvmsg_into([self._buf], _TIMEVAL_SPACE)
                        if _arrival(anc) < oldest:
                            self.stale += 1
                            continue
                except BlockingIOError:
                    break
                cap = parse_ip_udp(view[:n])
                if cap is not None:
                    out.append(cap)
        return out

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def _open(prog: list[tuple[int, int, int, int]], proto: int, ifname: str | None,
          rcvbuf: int, timestamps: bool) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(proto))
    try:
        _attach(sock, prog)
        if timestamps:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if ifname:
            sock.bind((ifname, proto))
        sock.setblocking(False)
        # Packets queued between socket() and the filter attach were not filtered.
        while True:
            try:
                sock.recv(2048)
            except BlockingIOError:
                break
    except BaseException:
        sock.close()
        raise
    return sock


def _arrival(ancdata: list[tuple[int, int, bytes]]) -> float:
    """The kernel's receive time from SO_TIMESTAMP ancillary data (inf when absent, so a
    packet without one is never taken for stale)."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP and len(data) >= 16:
            sec, usec = struct.unpack_from("qq", data)
            return float(sec + usec / 1e6)
    return float("inf")


def _attach(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    raw = b"".join(struct.pack("HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(raw)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("HL", len(prog), ctypes.addressof(buf)))


class PortSender:
    """Sends UDP datagrams with source port `port` although another process owns that port
    (raw sockets; root or CAP_NET_RAW). The source address is the one the kernel would pick
    for the destination.

    The sockets are IPPROTO_RAW (gateway/sender.py), which are send-only: an IPPROTO_UDP raw
    socket, even with a filter refusing everything, made the kernel clone every UDP datagram
    the namespace received (all of WireGuard's traffic) for it before the filter ran."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sender: UdpSender | None = None

    def sendto(self, payload: bytes, dst: tuple[str, int]) -> None:
        family = socket.AF_INET6 if ":" in dst[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as route:
            route.connect(dst)  # no packet is sent: only the route (source address) is looked up
            src = route.getsockname()[0]
        if self.sender is None:
            self.sender = UdpSender()
        self.sender.send(payload, socket.inet_pton(family, src), self.port,
                         socket.inet_pton(family, dst[0]), dst[1])

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
            self.sender = None
