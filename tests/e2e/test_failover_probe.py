"""Prober and probe responder over real UDP sockets on loopback (needs root for
SO_BINDTODEVICE; nothing is configured, only sockets are opened)."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from wiremesh.agent.probe_responder import PROBE_MAGIC, PROBE_SIZE, start_responder
from wiremesh.agent.prober import Prober

pytestmark = pytest.mark.e2e

if os.geteuid() != 0:
    pytest.skip("binding probe sockets to a device needs root", allow_module_level=True)


class Replies:
    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[str, float, float]] = asyncio.Queue()

    def __call__(self, key: str, sent: float, received: float) -> None:
        self.got.put_nowait((key, sent, received))

    async def next(self) -> tuple[str, float, float]:
        return await asyncio.wait_for(self.got.get(), 5)


async def test_probe_round_trip_through_the_responder() -> None:
    responder = await start_responder("127.0.0.1", 0)
    port = responder.get_extra_info("sockname")[1]
    replies = Replies()
    prober = Prober("lo", replies, port=port)
    try:
        await prober.send("router-a", "127.0.0.1")
        await prober.send("router-b", "127.0.0.1")
        got = {(await replies.next())[0], (await replies.next())[0]}
        assert got == {"router-a", "router-b"}
        await prober.send("router-a", "127.0.0.1")
        key, sent, received = await replies.next()
        assert key == "router-a" and received >= sent
        # The reply names the send time the caller recorded, exactly: the failover machine
        # matches it to take a round-trip sample (a fresh clock reading never matched, so
        # agents judged every path by the fixed deadline).
        stamp = sent + 0.123456
        await prober.send("router-a", "127.0.0.1", stamp)
        assert (await replies.next())[1] == stamp
    finally:
        prober.close()
        responder.close()


async def test_responder_echoes_only_probes() -> None:
    responder = await start_responder("127.0.0.1", 0)
    addr = responder.get_extra_info("sockname")
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.connect(addr)
        probe = PROBE_MAGIC + bytes(PROBE_SIZE - len(PROBE_MAGIC))
        for junk in (b"hello", PROBE_MAGIC + b"x" * 100, b"XXXX" + bytes(PROBE_SIZE - 4)):
            s.send(junk)
        s.send(probe)
        # Loopback keeps order: had any junk been echoed, it would arrive first.
        assert await asyncio.wait_for(loop.sock_recv(s, 2048), 5) == probe
    responder.close()


async def test_answer_from_another_address_or_to_another_prober_is_ignored() -> None:
    loop = asyncio.get_running_loop()
    # A trap standing in for the responder, so the test decides what comes back, and from where.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as trap, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wrong:
        trap.bind(("127.0.0.1", 0))
        wrong.bind(("127.0.0.2", 0))
        trap.setblocking(False)
        port = trap.getsockname()[1]
        replies, others = Replies(), Replies()
        prober, other = Prober("lo", replies, port=port), Prober("lo", others, port=port)

        async def probe(p: Prober, key: str) -> tuple[bytes, tuple]:
            await p.send(key, "127.0.0.1")
            return await asyncio.wait_for(loop.sock_recvfrom(trap, 2048), 5)

        try:
            data_a, to_prober = await probe(prober, "router-a")
            data_x, _ = await probe(prober, "router-x")
            wrong.sendto(data_x, to_prober)  # from an address the probe did not go to
            trap.sendto(data_a, to_prober)
            # Same socket, same order: an accepted forgery would have been reported first.
            key, sent, received = await replies.next()
            assert key == "router-a" and received >= sent

            await probe(other, "router-b")  # other's sequence 1, like router-a's: unanswered
            data_d, to_other = await probe(other, "router-d")
            trap.sendto(data_a, to_other)  # our answer at the other prober: not its nonce
            trap.sendto(data_d, to_other)
            assert (await others.next())[0] == "router-d"

            data_c, _ = await probe(prober, "router-c")
            trap.sendto(data_a, to_prober)  # a duplicate answer is not counted twice
            trap.sendto(data_c, to_prober)
            assert (await replies.next())[0] == "router-c"
        finally:
            prober.close()
            other.close()
