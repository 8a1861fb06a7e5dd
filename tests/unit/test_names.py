"""Names for peers: the resolver answers exactly the peers policy lets a peer see (compiled
netmaps, real DNS messages), split-DNS zones and the rest are forwarded, and the mesh domain
travels in the netmap and its deltas."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import Awaitable, Callable

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from wiremesh.agent.resolver import MeshResolver, ResolverService, start_resolver
from wiremesh.core.models import MeshState, PeerInfo, Policy
from wiremesh.core.names import Answer, Forward, NameTable, Pointer, Upstream
from wiremesh.core.netmap import apply_delta, diff
from wiremesh.core.policy import compile_netmaps
from wiremesh.core.wire import (
    DNS_CONFIG,
    NETMAP,
    DnsConfig,
    DnsZone,
    Netmap,
    check_dns_name,
)


def key(i: int) -> str:
    return base64.b64encode(bytes([i]) * 32).decode()


# a may reach b (so a and b see each other); c is in no policy: nobody sees c.
STATE = MeshState(
    {1: PeerInfo(1, "alpha", key(1), "100.64.0.1"),
     2: PeerInfo(2, "Beta", key(2), "100.64.0.2"),
     3: PeerInfo(3, "gamma", key(3), "100.64.0.3")},
    {"a": frozenset({1}), "b": frozenset({2})},
    (Policy("a-to-b", ("a",), ("b",), "tcp"),),
)
DNS = DnsConfig("mesh.internal", (DnsZone("corp.example", ("198.18.0.53",)),
                                  DnsZone("lab.corp.example", ("198.18.1.53",))))


def netmaps() -> dict[int, Netmap]:
    return {pid: dataclasses.replace(nm, dns=DNS) for pid, nm in compile_netmaps(STATE).items()}


def ask(resolver: MeshResolver, name: str, rdtype: str = "A") -> dns.message.Message:
    reply = resolver.answer(dns.message.make_query(name, rdtype))
    assert isinstance(reply, dns.message.Message), f"{name} was forwarded to {reply}"
    return reply


def addresses(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


def resolver_of(peer_id: int) -> MeshResolver:
    r = MeshResolver(upstream=("192.0.2.53",))
    r.set_netmap(netmaps()[peer_id])
    return r


def test_a_peer_resolves_itself_and_the_peers_policy_lets_it_see() -> None:
    alpha = resolver_of(1)
    for name, ip in (("alpha.mesh.internal", "100.64.0.1"), ("beta.mesh.internal.", "100.64.0.2"),
                     ("BETA.Mesh.Internal", "100.64.0.2")):
        reply = ask(alpha, name)
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
        assert addresses(reply) == [ip], name


def test_peers_outside_policy_do_not_exist() -> None:
    for pid in (1, 2):
        reply = ask(resolver_of(pid), "gamma.mesh.internal")
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert not reply.answer
    # gamma sees nobody but itself.
    gamma = resolver_of(3)
    assert ask(gamma, "alpha.mesh.internal").rcode() == dns.rcode.NXDOMAIN
    assert addresses(ask(gamma, "gamma.mesh.internal")) == ["100.64.0.3"]


def test_a_policy_change_changes_the_answers() -> None:
    state = dataclasses.replace(STATE, policies=())
    alpha = MeshResolver()
    alpha.set_netmap(compile_netmaps(state)[1])
    assert ask(alpha, "beta.mesh.internal").rcode() == dns.rcode.NXDOMAIN


def test_other_types_and_reverse_names() -> None:
    alpha = resolver_of(1)
    aaaa = ask(alpha, "beta.mesh.internal", "AAAA")
    assert aaaa.rcode() == dns.rcode.NOERROR and not aaaa.answer  # exists, no IPv6
    ptr = ask(alpha, "2.0.64.100.in-addr.arpa", "PTR")
    assert addresses(ptr) == ["beta.mesh.internal."]
    assert ask(alpha, "the.mesh.internal").rcode() == dns.rcode.NXDOMAIN
    assert ask(alpha, "mesh.internal").rcode() == dns.rcode.NXDOMAIN


def test_split_dns_zones_and_everything_else_are_forwarded() -> None:
    alpha = resolver_of(1)
    forward = alpha.answer(dns.message.make_query("intranet.corp.example", "A"))
    assert forward == ("198.18.0.53",)
    assert alpha.answer(dns.message.make_query("x.lab.corp.example", "A")) == ("198.18.1.53",)
    assert alpha.answer(dns.message.make_query("example.org", "A")) == ("192.0.2.53",)
    # The reverse of an address we do not know is not ours either.
    assert alpha.answer(dns.message.make_query("3.0.64.100.in-addr.arpa", "PTR")) == (
        "192.0.2.53",)
    alone = MeshResolver()  # nothing to forward to (systemd-resolved sends only our domains)
    refused = alone.answer(dns.message.make_query("example.org", "A"))
    assert isinstance(refused, dns.message.Message)
    assert refused.rcode() == dns.rcode.REFUSED


def test_name_table_decisions() -> None:
    table = NameTable.of(netmaps()[1])
    assert table.decide("beta.mesh.internal") == Answer("100.64.0.2")
    assert table.decide("gamma.mesh.internal") == Answer(None)
    assert table.decide("1.0.64.100.in-addr.arpa.") == Pointer("alpha.mesh.internal")
    assert table.decide("a.corp.example") == Forward("corp.example", ("198.18.0.53",))
    assert table.decide("notcorp.example") == Upstream()
    assert table.routed_domains == ("mesh.internal", "lab.corp.example", "corp.example")
    # Without a netmap (fresh agent): the default domain, no names.
    assert NameTable.of(None).decide("alpha.mesh.internal") == Answer(None)


def test_dns_config_travels_in_netmaps_and_deltas() -> None:
    old = compile_netmaps(STATE)[1]
    new = dataclasses.replace(old, version=1, dns=DNS)
    delta = diff(old, new)
    assert delta.dns == DNS and not delta.empty
    assert apply_delta(old, delta) == new
    assert diff(new, dataclasses.replace(new, version=2)).dns is None
    assert NETMAP.validate_json(NETMAP.dump_json(new)) == new
    # A netmap from a server that knows nothing of DNS gets the default domain.
    bare = NETMAP.dump_python(old, mode="json")
    del bare["dns"]
    assert NETMAP.validate_python(bare).dns == DnsConfig()


@pytest.mark.parametrize("bad", ["", "a..b", "-a.b", "a b", "ünï.code", "x" * 64 + ".a", 5])
def test_bad_domains_are_refused_with_a_clear_error(bad: object) -> None:
    with pytest.raises(ValueError, match=r"bad domain|expected a string"):
        check_dns_name(bad)
    with pytest.raises(ValueError, match="domain"):
        DNS_CONFIG.validate_python({"domain": bad})


def test_domains_are_canonical() -> None:
    assert check_dns_name("Mesh.Internal.") == "mesh.internal"
    with pytest.raises(ValueError, match="nameservers"):
        DNS_CONFIG.validate_python({"zones": [{"zone": "corp.example",
                                               "nameservers": ["not-an-ip"]}]})


# --- over real sockets: UDP and TCP, and a forwarded reply too big for UDP --------------------

BIG_TXT = [c * 200 for c in "abcdefgh"]  # ~1.6 kB: more than a 512-byte UDP reply carries


class _Upstream:
    """A nameserver on loopback that answers every TXT query with BIG_TXT: truncated (TC, no
    answer) over UDP, whole over TCP, as real nameservers do."""

    def __init__(self) -> None:
        self.tcp_queries = 0

    def answer(self, data: bytes, tcp: bool) -> bytes:
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        if tcp:
            self.tcp_queries += 1
            reply.answer.append(dns.rrset.from_text_list(query.question[0].name, 60, "IN",
                                                         "TXT", [f'"{t}"' for t in BIG_TXT]))
        else:
            reply.flags |= dns.flags.TC
        return reply.to_wire()

    async def start(self) -> tuple[asyncio.Server, asyncio.DatagramTransport, int]:
        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            size = int.from_bytes(await reader.readexactly(2), "big")
            wire = self.answer(await reader.readexactly(size), tcp=True)
            writer.write(len(wire).to_bytes(2, "big") + wire)
            await writer.drain()
            writer.close()

        upstream = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.transport.sendto(upstream.answer(data, tcp=False), addr)  # type: ignore[attr-defined]

        server = await asyncio.start_server(tcp, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Udp, local_addr=("127.0.0.1", port))
        return server, transport, port


async def _served(check: Callable[[ResolverService], Awaitable[None]]) -> None:
    upstream = _Upstream()
    up_tcp, up_udp, up_port = await upstream.start()
    service = await start_resolver("127.0.0.1", ("127.0.0.1",), 0)
    service.resolver.forward_port = up_port
    service.resolver.set_netmap(netmaps()[1])
    try:
        await check(service)
        port = service.port
        # What a truncated UDP reply makes a stub resolver do next: ask again over TCP.
        query = dns.message.make_query("big.example.org", "TXT")
        udp = await dns.asyncquery.udp(query, "127.0.0.1", timeout=5, port=port)
        assert udp.flags & dns.flags.TC and not udp.answer
        tcp = await dns.asyncquery.tcp(query, "127.0.0.1", timeout=5, port=port)
        assert not tcp.flags & dns.flags.TC
        assert sorted(rd.strings[0].decode() for rrset in tcp.answer for rd in rrset) == BIG_TXT
        assert upstream.tcp_queries == 1
    finally:
        service.close()
        up_tcp.close()
        up_udp.close()


def test_the_resolver_answers_over_udp_and_tcp_and_passes_big_replies_whole_over_tcp() -> None:
    async def mesh_names(service: ResolverService) -> None:
        query = dns.message.make_query("beta.mesh.internal", "A")
        for ask_over in (dns.asyncquery.udp, dns.asyncquery.tcp):
            reply = await ask_over(query, "127.0.0.1", timeout=5, port=service.port)
            assert addresses(reply) == ["100.64.0.2"], ask_over
        # Several queries on one TCP connection (RFC 7766), and garbage ends only that one.
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        for name in ("alpha.mesh.internal", "gamma.mesh.internal"):
            wire = dns.message.make_query(name, "A").to_wire()
            writer.write(len(wire).to_bytes(2, "big") + wire)
            size = int.from_bytes(await reader.readexactly(2), "big")
            reply = dns.message.from_wire(await reader.readexactly(size))
            assert reply.rcode() == (dns.rcode.NOERROR if name.startswith("alpha")
                                     else dns.rcode.NXDOMAIN)
        writer.write(b"\x00\x03abc")
        assert await reader.read() == b""
        writer.close()

    asyncio.run(_served(mesh_names))
