"""The agent's DNS resolver (dnspython for the wire format): answers the mesh domain from the
netmap (core/names.py), forwards split-DNS zones to their nameservers and anything else to the
system's previous nameservers.

It listens on the peer's own overlay address, port 53, UDP and TCP (a client whose UDP reply
came back truncated asks again over TCP): local programs reach it through the system resolver
(agent/sysdns.py); other peers could only reach it where policy opens port 53 on this peer, as
for any other service.
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
_MAX_TCP_CLIENTS = 64
TCP_IDLE_S = 10.0


class MeshResolver:
    """What to answer a query with, over either transport (UDP and TCP serve the same
    answers; a client retries over TCP when a forwarded reply comes back truncated)."""

    def __init__(self, upstream: Sequence[str] = (), forward_port: int = DNS_PORT) -> None:
        self.table = NameTable.of(None)
        self.upstream = tuple(upstream)
        self.forward_port = forward_port

    def set_netmap(self, netmap: Netmap) -> None:
        self.table = NameTable.of(netmap)

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

    def immediate(self, query: dns.message.Message) -> dns.message.Message | tuple[str, ...]:
        """`answer`, with malformed queries refused first."""
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return _reply(query, dns.rcode.FORMERR)
        return self.answer(query)

    async def forward(self, query: dns.message.Message, servers: tuple[str, ...],
                      tcp: bool) -> dns.message.Message:
        """The first nameserver's reply, SERVFAIL when none answers. A TCP client gets the
        whole reply (TCP upstream when UDP came back truncated); a UDP client gets what fits,
        truncated replies included, and retries over TCP itself."""
        for server in servers:
            try:
                if tcp:
                    reply, _ = await dns.asyncquery.udp_with_fallback(
                        query, server, timeout=FORWARD_TIMEOUT_S, port=self.forward_port,
                        ignore_unexpected=True)
                else:
                    reply = await dns.asyncquery.udp(query, server, timeout=FORWARD_TIMEOUT_S,
                                                     port=self.forward_port,
                                                     ignore_unexpected=True)
            except (dns.exception.DNSException, OSError, EOFError) as e:
                log.debug("nameserver %s did not answer %s: %s", server, query.question[0], e)
                continue
            return reply
        return _reply(query, dns.rcode.SERVFAIL)


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, resolver: MeshResolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = _parse(data)
        if query is None:
            return
        reply = self.resolver.immediate(query)
        if isinstance(reply, dns.message.Message):
            self._send(reply, addr)
            return
        if len(self._pending) >= _MAX_PENDING:
            self._send(_reply(query, dns.rcode.SERVFAIL), addr)
            return
        task = asyncio.create_task(self._forward(query, reply, addr))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _forward(self, query: dns.message.Message, servers: tuple[str, ...],
                       addr: tuple[str, int]) -> None:
        self._send(await self.resolver.forward(query, servers, tcp=False), addr)

    def _send(self, reply: dns.message.Message, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(reply.to_wire(), addr)

    def close(self) -> None:
        for t in self._pending:
            t.cancel()
        if self.transport is not None:
            self.transport.close()


class _TcpServer:
    """DNS over TCP (RFC 7766): length-prefixed messages, several per connection, answered in
    order; idle connections are closed, and at most `_MAX_TCP_CLIENTS` are served at once."""

    def __init__(self, resolver: MeshResolver) -> None:
        self.resolver = resolver
        self.server: asyncio.Server | None = None
        self._clients = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= _MAX_TCP_CLIENTS:
            writer.close()
            return
        self._clients += 1
        try:
            while True:
                size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2),
                                                             TCP_IDLE_S), "big")
                query = _parse(await asyncio.wait_for(reader.readexactly(size),
                                                                   TCP_IDLE_S))
                if query is None:
                    return  # not DNS: the stream cannot be trusted any further
                reply = self.resolver.immediate(query)
                if not isinstance(reply, dns.message.Message):
                    reply = await self.resolver.forward(query, reply, tcp=True)
                wire = reply.to_wire()
                writer.write(len(wire).to_bytes(2, "big") + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            return
        finally:
            self._clients -= 1
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class ResolverService:
    """The resolver listening on UDP and TCP at one address and port."""

    def __init__(self, resolver: MeshResolver, udp: _UdpServer, tcp: _TcpServer,
                 port: int) -> None:
        self.resolver = resolver
        self.port = port
        self._udp = udp
        self._tcp = tcp

    def close(self) -> None:
        self._udp.close()
        self._tcp.close()


def _parse(data: bytes) -> dns.message.Message | None:
    """The query in `data`, or None when it is not DNS at all (nothing to answer to)."""
    try:
        return dns.message.from_wire(data)
    except dns.exception.DNSException:
        return None


def _reply(query: dns.message.Message, rcode: int,
           authoritative: bool = False) -> dns.message.Message:
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.Rcode(rcode))
    if authoritative:
        reply.flags |= dns.flags.AA
    reply.flags |= dns.flags.RA
    return reply


async def start_resolver(address: str, upstream: Sequence[str],
                         port: int = DNS_PORT) -> ResolverService:
    """Listen on `address`:`port` (UDP and TCP; port 0 picks one free for both)."""
    resolver = MeshResolver(upstream)
    loop = asyncio.get_running_loop()
    tcp = _TcpServer(resolver)
    tcp.server = await asyncio.start_server(tcp.handle, address, port)
    port = tcp.server.sockets[0].getsockname()[1]
    udp = _UdpServer(resolver)
    try:
        await loop.create_datagram_endpoint(lambda: udp, local_addr=(address, port))
    except OSError:
        tcp.close()
        raise
    return ResolverService(resolver, udp, tcp, port)
