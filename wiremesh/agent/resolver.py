"""The agent's DNS resolver (UDP, dnspython for the wire format): answers the mesh domain
from the netmap (core/names.py), forwards split-DNS zones to their nameservers and anything
else to the system's previous nameservers.

It listens on the peer's own overlay address, port 53: local programs reach it through the
system resolver (agent/sysdns.py); other peers could only reach it where policy opens UDP 53
on this peer, as for any other service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from wiremesh.core.names import Answer, Forward, NameTable, Pointer
from wiremesh.core.wire import Netmap

log = logging.getLogger("wiremesh.agent.resolver")
DNS_PORT = 53
TTL = 60
FORWARD_TIMEOUT_S = 2.0
_MAX_PENDING = 256  # forwarded queries in flight; beyond that, SERVFAIL at once


class MeshResolver(asyncio.DatagramProtocol):
    def __init__(self, upstream: Sequence[str] = ()) -> None:
        self.table = NameTable.of(None)
        self.upstream = tuple(upstream)
        self.transport: asyncio.DatagramTransport | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def set_netmap(self, netmap: Netmap) -> None:
        self.table = NameTable.of(netmap)

    # --- asyncio protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return  # not DNS: nothing to answer to
        if query.flags & dns.flags.QR or len(query.question) != 1:
            self._send(_reply(query, dns.rcode.FORMERR), addr)
            return
        reply = self.answer(query)
        if isinstance(reply, dns.message.Message):
            self._send(reply, addr)
            return
        if len(self._pending) >= _MAX_PENDING:
            self._send(_reply(query, dns.rcode.SERVFAIL), addr)
            return
        task = asyncio.create_task(self._forward(query, reply, addr))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def close(self) -> None:
        for t in self._pending:
            t.cancel()
        if self.transport is not None:
            self.transport.close()

    # --- answers -------------------------------------------------------------------------------

    def answer(self, query: dns.message.Message) -> dns.message.Message | tuple[str, ...]:
        """The reply to a query answered here, or the nameservers to forward it to."""
        if query.opcode() != dns.opcode.QUERY:
            return _reply(query, dns.rcode.NOTIMP)
        q = query.question[0]
        decision = self.table.decide(q.name.to_text())
        if isinstance(decision, Answer):
            if decision.address is None:
                return _reply(query, dns.rcode.NXDOMAIN, authoritative=True)
            reply = _reply(query, dns.rcode.NOERROR, authoritative=True)
            if q.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
                reply.answer.append(dns.rrset.from_text(q.name, TTL, "IN", "A",
                                                        decision.address))
            return reply  # other types: the name exists, with no such data
        if isinstance(decision, Pointer):
            reply = _reply(query, dns.rcode.NOERROR, authoritative=True)
            if q.rdtype in (dns.rdatatype.PTR, dns.rdatatype.ANY):
                reply.answer.append(dns.rrset.from_text(q.name, TTL, "IN", "PTR",
                                                        decision.target + "."))
            return reply
        servers = decision.nameservers if isinstance(decision, Forward) else self.upstream
        return servers or _reply(query, dns.rcode.REFUSED)

    async def _forward(self, query: dns.message.Message, servers: tuple[str, ...],
                       addr: tuple[str, int]) -> None:
        for server in servers:
            try:
                reply = await dns.asyncquery.udp(query, server, timeout=FORWARD_TIMEOUT_S,
                                                 ignore_unexpected=True)
            except (dns.exception.DNSException, OSError) as e:
                log.debug("nameserver %s did not answer %s: %s", server, query.question[0], e)
                continue
            self._send(reply, addr)
            return
        self._send(_reply(query, dns.rcode.SERVFAIL), addr)

    def _send(self, reply: dns.message.Message, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(reply.to_wire(), addr)


def _reply(query: dns.message.Message, rcode: int,
           authoritative: bool = False) -> dns.message.Message:
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.Rcode(rcode))
    if authoritative:
        reply.flags |= dns.flags.AA
    reply.flags |= dns.flags.RA
    return reply


async def start_resolver(address: str, upstream: Sequence[str],
                         port: int = DNS_PORT) -> MeshResolver:
    resolver = MeshResolver(upstream)
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: resolver, local_addr=(address, port))
    return resolver
