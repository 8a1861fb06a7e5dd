"""A passive tap for handshake initiations: AF_PACKET socket + classic BPF filter.

Why AF_PACKET rather than an nftables queue: a queue puts the gateway *in* the packet path -
every packet to the port waits for this Python process's verdict, and if the process stalls or
dies, WireGuard traffic stops (or, with `bypass`, silently loses JIT). A packet socket is a
copy on the side: wireguard-go keeps receiving everything directly, the gateway only ever
slows itself down, and a kernel-side BPF program hands it nothing but IPv4/IPv6 UDP datagrams
to the listen port with a 148-byte payload starting with type 1 - data packets and everything
else never wake it up. It needs no firewall rules in the namespace and no netfilter bindings.
The tap sits before netfilter, so the guard (guard.py) can keep initiations the gateway has
not admitted away from wireguard-go while the gateway still reads all of them. The price of a
copy is that the client's initiation itself is not delivered to a peer installed a millisecond
later, so the provisioner completes the handshake by having the gateway initiate one itself
(see provisioner.py) instead of replaying the client's packet.
"""

from __future__ import annotations

import ctypes
import select
import socket
import struct
from dataclasses import dataclass

from wiremesh.gateway.noise import INITIATION_SIZE, MESSAGE_INITIATION

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
_SKF_AD_OFF = -0x1000
_SKF_AD_PROTOCOL = 0
_SKF_AD_PKTTYPE = 4
_UDP_LEN = 8 + INITIATION_SIZE

# Classic BPF opcodes (linux/filter.h).
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_LD_H_IND, _LD_B_IND = 0x48, 0x50
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


def initiation_filter(port: int) -> list[tuple[int, int, int, int]]:
    """BPF for a SOCK_DGRAM packet socket (data starts at the IP header): incoming UDP to
    `port`, 148-byte payload, first byte 1. Returns (code, jt, jf, k) tuples."""
    ok, drop = "ok", "drop"
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
        (_JSET_K, 0x3FFF, drop, None),  # any fragment: initiations are never fragmented
        (_LDX_B_MSH, 0, None, None),  # X = IPv4 header length
        (_LD_H_IND, 2, None, None),
        (_JEQ_K, port, None, drop),
        (_LD_H_IND, 4, None, None),
        (_JEQ_K, _UDP_LEN, None, drop),
        (_LD_B_IND, 8, None, None),
        (_JEQ_K, MESSAGE_INITIATION, ok, drop),
        "v6",  # no extension headers: WireGuard never sends any
        (_LD_B_ABS, 6, None, None),
        (_JEQ_K, socket.IPPROTO_UDP, None, drop),
        (_LD_H_ABS, 42, None, None),
        (_JEQ_K, port, None, drop),
        (_LD_H_ABS, 44, None, None),
        (_JEQ_K, _UDP_LEN, None, drop),
        (_LD_B_ABS, 48, None, None),
        (_JEQ_K, MESSAGE_INITIATION, ok, drop),
        ok,
        (_RET_K, 0xFFFF, None, None),
        drop,
        (_RET_K, 0, None, None),
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
        elif code in (_LD_B_ABS, _LD_H_ABS, _LD_B_IND, _LD_H_IND):
            off = k + (x if code in (_LD_B_IND, _LD_H_IND) else 0)
            size = 1 if code in (_LD_B_ABS, _LD_B_IND) else 2
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


@dataclass(frozen=True)
class Captured:
    payload: bytes
    src_addr: bytes  # 4 or 16 bytes
    src_port: int
    dst_addr: bytes  # the gateway's address the initiation was sent to


def parse_ip_udp(frame: bytes) -> Captured | None:
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
    end = udp + _UDP_LEN
    if len(frame) < end:
        return None
    (sport,) = struct.unpack_from("!H", frame, udp)
    return Captured(bytes(frame[udp + 8:end]), bytes(src), sport, bytes(dst))


class InitiationTap:
    """The packet socket; `read()` returns what arrived, in batches, without blocking long."""

    def __init__(self, port: int, ifname: str | None = None, rcvbuf: int = 32 << 20) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        try:
            prog = initiation_filter(port)
            raw = b"".join(struct.pack("HBBI", *insn) for insn in prog)
            buf = ctypes.create_string_buffer(raw)
            fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if ifname:
                self.sock.bind((ifname, ETH_P_ALL))
            self.sock.setblocking(False)
            # Packets queued between socket() and the filter attach were not filtered.
            self._drain()
        except BaseException:
            self.sock.close()
            raise
        self._poll = select.poll()
        self._poll.register(self.sock, select.POLLIN)
        self._buf = bytearray(2048)

    def _drain(self) -> None:
        while True:
            try:
                self.sock.recv(2048)
            except BlockingIOError:
                return

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, timeout: float, max_batch: int = 512) -> list[Captured]:
        if not self._poll.poll(int(timeout * 1000)):
            return []
        out = []
        view = memoryview(self._buf)
        for _ in range(max_batch):
            try:
                n = self.sock.recv_into(self._buf)
            except BlockingIOError:
                break
            cap = parse_ip_udp(view[:n])
            if cap is not None:
                out.append(cap)
        return out

    def close(self) -> None:
        self.sock.close()
