"""The nftables ruleset with real traffic: three peers over wireguard-go, one of them (b) also
routing an internal network. b's netmap allows a few things; everything else must be dropped,
replies must pass, the underlay must not be touched, and a replace must be atomic.

    a 100.64.0.1 --\\                       /-- n 198.18.1.2 (internal, no route to the mesh)
                    >-- b 100.64.0.2 (router)
    c 100.64.0.3 --/
"""

from __future__ import annotations

import dataclasses
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from wiremesh.core.models import PortRange
from wiremesh.core.wire import ForwardRule, InboundRule, Netmap
from wiremesh.firewall import nft
from wiremesh.firewall.render import FlowTimeouts, render
from wiremesh.lab.mesh import wait_until
from wiremesh.lab.netns import Host, Lab, missing_requirements
from wiremesh.wg.backend import WgPeerConfig
from wiremesh.wg.keys import generate_private_key, public_key_of
from wiremesh.wg.uapi import WireguardGoBackend

pytestmark = pytest.mark.e2e

if missing := missing_requirements():
    pytest.skip(f"lab needs: {', '.join(missing)}", allow_module_level=True)

INTERNAL = "198.18.1.0/24"
OVERLAY = {"a": "100.64.0.1", "b": "100.64.0.2", "c": "100.64.0.3"}
N_IP = "198.18.1.2"

# Echo servers: argv = proto:port ...; each answers what it receives, prefixed with "ok ".
SERVER = r"""
import socket, sys, threading
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=lambda c=c: (c.sendall(b"ok " + c.recv(100)), c.close()),
                         daemon=True).start()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        data, addr = s.recvfrom(100); s.sendto(b"ok " + data, addr)
for spec in sys.argv[1:]:
    proto, port = spec.split(":")
    threading.Thread(target=tcp if proto == "tcp" else udp, args=(int(port),)).start()
"""

# One probe: exit 0 when the echo came back within the timeout.
CLIENT = r"""
import socket, sys
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=timeout)
        s.sendall(b"hi"); s.settimeout(timeout); ok = s.recv(100) == b"ok hi"
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(timeout)
        s.sendto(b"hi", (host, port)); ok = s.recvfrom(100)[0] == b"ok hi"
except OSError:
    ok = False
sys.exit(0 if ok else 1)
"""

UNANSWERED_UDP = 6000  # b lets a send here; nothing listens, so b's kernel answers "unreachable"
BLOCKED_TIMEOUT = 0.6  # a dropped SYN/datagram shows as a timeout this long


@dataclass
class Mesh:
    lab: Lab
    hosts: dict[str, Host]
    wg_if: dict[str, str]

    def probe(self, src: str, proto: str, dst: str, port: int,
              timeout: float = BLOCKED_TIMEOUT) -> bool:
        h = self.hosts[src]
        res = h.run([sys.executable, "-c", CLIENT, proto, dst, str(port), str(timeout)],
                    check=False, timeout=timeout + 10)
        return res.returncode == 0

    def eventually(self, src: str, proto: str, dst: str, port: int, deadline_s: float = 10.0
                   ) -> bool:
        """For things that must work: retry (first handshakes, servers starting)."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.probe(src, proto, dst, port, timeout=1.0):
                return True
        return False

    # Where the ACL of a and c (they route nothing) sits: on their WireGuard interface's
    # own hooks, or on the input and output hooks (kernels without an egress hook).
    client_hooks: str = "device"

    def apply(self, netmap: Netmap) -> None:
        nft.apply(netmap, self.wg_if["b"], netns=self.hosts["b"].ns)

    def apply_client(self, name: str, netmap: Netmap, timeouts: FlowTimeouts) -> None:
        nft.load(render(netmap, self.wg_if[name], timeouts=timeouts,
                        device_hooks=self.client_hooks == "device"),
                 netns=self.hosts[name].ns)


def _wireguard(lab: Lab, hosts: dict[str, Host]) -> tuple[dict[str, str], list]:
    keys = {n: generate_private_key() for n in OVERLAY}
    ifs, backends = {}, []
    for n in OVERLAY:
        ifs[n] = lab.name(f"w{n}")
        wg = WireguardGoBackend(ifs[n], netns=hosts[n].ns)
        backends.append(wg)
        wg.set_device(keys[n], 51820)
        hosts[n].run(["ip", "addr", "add", f"{OVERLAY[n]}/10", "dev", ifs[n]])
        hosts[n].run(["ip", "link", "set", ifs[n], "up"])
        if n == "b":
            wg.set_peers([WgPeerConfig(public_key_of(keys[x]), (f"{OVERLAY[x]}/32",),
                                       f"{hosts[x].ip}:51820") for x in ("a", "c")], [])
        else:
            wg.set_peers([WgPeerConfig(public_key_of(keys["b"]), (f"{OVERLAY['b']}/32",
                                                                  INTERNAL),
                                       f"{hosts['b'].ip}:51820")], [])
            hosts[n].run(["ip", "route", "add", INTERNAL, "dev", ifs[n]])
    return ifs, backends


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    with Lab() as lab:
        backends = []
        try:
            under = lab.add_switch("u", "192.0.2.0/24")
            inside = lab.add_switch("i", INTERNAL)
            hosts = {n: lab.add_host(n) for n in ("a", "b", "c", "n")}
            for n in ("a", "b", "c"):
                lab.connect(hosts[n], under)
            lab.connect(hosts["b"], inside, "198.18.1.1/24")
            lab.connect(hosts["n"], inside, f"{N_IP}/24")
            hosts["b"].run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            ifs, backends = _wireguard(lab, hosts)
            for n, specs in (("b", ["tcp:8080", "tcp:9090", "udp:5353", "udp:5454"]),
                             ("n", ["tcp:8080", "tcp:9090"]), ("a", ["tcp:7070", "tcp:7171"])):
                hosts[n].popen([sys.executable, "-c", SERVER, *specs])
            m = Mesh(lab, hosts, ifs)
            # Without the masquerade n cannot answer the mesh, so bring it up first.
            m.apply(B_NETMAP)
            yield m
        finally:
            for wg in backends:
                wg.close()


def P(a: int) -> tuple[PortRange, ...]:
    return (PortRange(a, a),)


B_NETMAP = Netmap(
    version=1, peer_id=2, name="b", overlay_ip=OVERLAY["b"],
    inbound=frozenset({InboundRule(OVERLAY["a"], "tcp", P(8080)),
                       InboundRule(OVERLAY["a"], "udp", P(5353)),
                       InboundRule(OVERLAY["a"], "udp", P(UNANSWERED_UDP)),
                       InboundRule(OVERLAY["c"], "icmp")}),
    forward=frozenset({ForwardRule(OVERLAY["a"], INTERNAL, "tcp", P(8080))}),
    masquerade=frozenset({INTERNAL}),
)


def test_allowed_traffic_passes_and_replies_come_back(mesh: Mesh) -> None:
    b = OVERLAY["b"]
    assert mesh.eventually("a", "tcp", b, 8080)
    assert mesh.eventually("a", "udp", b, 5353)
    assert mesh.hosts["c"].ping(b, count=3, timeout_s=1)
    # b opens a connection out to a: a's answers come in on b's WireGuard iface, established.
    assert mesh.eventually("b", "tcp", OVERLAY["a"], 7070)
    # Routed, forwarded and masqueraded into the internal network.
    assert mesh.eventually("a", "tcp", N_IP, 8080)


def test_everything_else_from_the_mesh_is_dropped(mesh: Mesh) -> None:
    b = OVERLAY["b"]
    assert mesh.eventually("a", "tcp", b, 8080)  # the tunnel is up: drops are the firewall's
    assert not mesh.probe("a", "tcp", b, 9090)
    assert not mesh.probe("a", "udp", b, 5454)
    assert not mesh.probe("c", "tcp", b, 8080)
    assert not mesh.hosts["a"].ping(b, count=1, timeout_s=BLOCKED_TIMEOUT)
    assert not mesh.probe("a", "tcp", N_IP, 9090)
    assert not mesh.probe("c", "tcp", N_IP, 8080)


def test_underlay_is_untouched(mesh: Mesh) -> None:
    # b drops pings from a over the mesh, but not over the underlay.
    assert mesh.hosts["a"].ping(mesh.hosts["b"].ip, count=1, timeout_s=1)
    assert mesh.probe("a", "tcp", mesh.hosts["b"].ip, 9090, timeout=2)


def test_replace_is_atomic_and_remove_opens_everything(mesh: Mesh) -> None:
    b = OVERLAY["b"]
    swapped = Netmap(version=2, peer_id=2, name="b", overlay_ip=b,
                     inbound=frozenset({InboundRule(OVERLAY["a"], "tcp", P(9090))}))
    try:
        mesh.apply(swapped)
        assert mesh.eventually("a", "tcp", b, 9090)
        assert not mesh.probe("a", "tcp", b, 8080)
        nft.remove(netns=mesh.hosts["b"].ns)
        nft.remove(netns=mesh.hosts["b"].ns)  # absent table: still fine
        assert mesh.eventually("a", "tcp", b, 8080)
        assert mesh.eventually("a", "udp", b, 5454)
    finally:
        mesh.apply(B_NETMAP)


def test_a_large_ruleset_loads_quickly(mesh: Mesh) -> None:
    rnd = random.Random(3)
    ips = [f"100.{64 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(1, 5001)]
    inbound = {InboundRule(ip, rnd.choice(["tcp", "udp"]),
                           (PortRange(p := rnd.randint(1, 60000), p + rnd.randint(0, 100)),))
               for ip in ips}
    inbound |= {InboundRule(ip, "icmp") for ip in ips[:1000]}
    big = Netmap(version=3, peer_id=2, name="b", overlay_ip=OVERLAY["b"],
                 inbound=frozenset(inbound),
                 forward=frozenset(ForwardRule(ip, INTERNAL, "tcp", P(443)) for ip in ips[:2000]),
                 masquerade=frozenset({INTERNAL}))
    script = render(big, mesh.wg_if["b"])
    ns = mesh.hosts["b"].ns
    nft.load(script, netns=ns, check=True)
    try:
        t0 = time.monotonic()
        nft.load(script, netns=ns)
        took = time.monotonic() - t0
        listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "set", "inet",
                                 "wiremesh", "in_icmp"], capture_output=True, text=True,
                                check=True).stdout
        assert listed.count("100.64.") == 1000
        assert took < 10, f"loading 8000 elements took {took:.1f} s"
    finally:
        mesh.apply(B_NETMAP)


def test_a_broken_script_changes_nothing(mesh: Mesh) -> None:
    with pytest.raises(nft.NftError, match="nft load failed"):
        nft.load(render(B_NETMAP, mesh.wg_if["b"]) + "this is not nft\n",
                 netns=mesh.hosts["b"].ns)
    assert mesh.eventually("a", "tcp", OVERLAY["b"], 8080)
    assert not mesh.probe("a", "tcp", OVERLAY["b"], 9090)


# Accepts connections and answers each with the MSS its socket ended up with.
MSS_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
while True:
    c, _ = s.accept()
    c.sendall(str(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)).encode()); c.close()
"""
# Prints "<our MSS> <the server's MSS>" for one connection.
MSS_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
theirs = c.recv(16).decode()
print(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), theirs)
"""
MSS_PORT = 8181


def _mss_pair(mesh: Mesh, mtu: int) -> tuple[int, int]:
    """Apply b's netmap (plus the MSS port) with tunnel MTU `mtu`; connect a -> n through b."""
    netmap = dataclasses.replace(B_NETMAP, forward=B_NETMAP.forward | {
        ForwardRule(OVERLAY["a"], INTERNAL, "tcp", P(MSS_PORT))})
    nft.apply(netmap, mesh.wg_if["b"], netns=mesh.hosts["b"].ns, mtu=mtu)
    deadline = time.monotonic() + 10
    while True:
        res = mesh.hosts["a"].run([sys.executable, "-c", MSS_CLIENT, N_IP, str(MSS_PORT)],
                                  check=False)
        if res.returncode == 0:
            ours, theirs = res.stdout.split()
            return int(ours), int(theirs)
        assert time.monotonic() < deadline, f"no connection a -> n:{MSS_PORT}: {res.stderr}"


def test_router_clamps_the_mss_both_ways_to_its_tunnel_mtu(mesh: Mesh) -> None:
    mesh.hosts["n"].popen([sys.executable, "-c", MSS_SERVER, str(MSS_PORT)])
    try:
        # a's tunnel is 1420 (MSS 1380) and n's LAN 1500 (MSS 1460): unclamped at 1420,
        # both ends settle on a's 1380 less TCP options.
        wide = _mss_pair(mesh, 1420)
        assert min(wide) > 1200 - 40
        # A router whose tunnel is 1200 rewrites both SYNs: n sends segments that fit it,
        # and so does a, which knows nothing of the router's MTU.
        narrow = _mss_pair(mesh, 1200)
        assert max(narrow) <= 1200 - 40
    finally:
        mesh.apply(B_NETMAP)


# --- a peer that routes nothing: replies recognised without conntrack ----------------------------

# a and c route nothing: a lets b reach its port 7070, c lets nobody in.
A_NETMAP = Netmap(version=1, peer_id=1, name="a", overlay_ip=OVERLAY["a"],
                  inbound=frozenset({InboundRule(OVERLAY["b"], "tcp", P(7070))}))
C_NETMAP = Netmap(version=1, peer_id=3, name="c", overlay_ip=OVERLAY["c"])
UDP_TIMEOUT = 3  # seconds, short for the expiry test

# In a: send one datagram from `port` to host:dport (opening a flow), then exit.
UDP_OPEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.sendto(b"open", (sys.argv[2], int(sys.argv[3])))
"""
# In a: listen on the given ports for a while; print "ready", then each datagram's payload.
UDP_LISTEN = r"""
import select, socket, sys, time
socks = []
for port in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port))); socks.append(s)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
while (left := end - time.monotonic()) > 0:
    for s in select.select(socks, [], [], left)[0]:
        print(s.recv(65535).decode(), flush=True)
"""
# In b: send `payload` from port sport to host:dport.
UDP_SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.sendto(sys.argv[4].encode(), (sys.argv[2], int(sys.argv[3])))
"""
# In a: a connected UDP socket learns of b's "port unreachable" only if the ICMP error got in.
UDP_REFUSED = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
s.connect((sys.argv[1], int(sys.argv[2])))
for _ in range(5):
    s.send(b"anyone?")
    try:
        s.recv(100)
    except ConnectionRefusedError:
        sys.exit(0)
    except OSError:
        pass
sys.exit(1)
"""


@pytest.fixture(scope="module", params=["device", "inet"])
def clients(mesh: Mesh, request: pytest.FixtureRequest) -> Iterator[Mesh]:
    """a and c under their own stateless-for-conntrack ACL (b, the router, keeps its own)."""
    m = dataclasses.replace(mesh, client_hooks=request.param)
    try:
        for name, netmap in (("a", A_NETMAP), ("c", C_NETMAP)):
            m.apply_client(name, netmap, FlowTimeouts(udp=UDP_TIMEOUT))
        yield m
    finally:
        for name in ("a", "c"):
            nft.remove(netns=mesh.hosts[name].ns)


def _udp_from_b(mesh: Mesh, sends: list[tuple[int, int, str]], ports: list[int]) -> set[str]:
    """What a receives on `ports` of b's datagrams (sport, dport, payload)."""
    listener = subprocess.Popen(
        mesh.hosts["a"].cmd([sys.executable, "-c", UDP_LISTEN, "1.5", *map(str, ports)]),
        stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        for sport, dport, payload in sends:
            mesh.hosts["b"].run([sys.executable, "-c", UDP_SEND, str(sport), OVERLAY["a"],
                                 str(dport), payload])
        out, _ = listener.communicate(timeout=15)
    finally:
        listener.kill()
        listener.wait()
    return set(out.split())


def _flows(mesh: Mesh, host: str) -> str:
    family = "netdev" if mesh.client_hooks == "device" else "inet"
    return mesh.hosts[host].run(["nft", "list", "set", family, "wiremesh", "flows"]).stdout


def test_a_peer_that_routes_nothing_runs_no_conntrack(clients: Mesh) -> None:
    for name in ("a", "c"):
        ruleset = clients.hosts[name].run(["nft", "list", "ruleset"]).stdout
        assert "chain to_mesh" in ruleset
        assert not re.search(r"\bct\b", ruleset), f"{name} has a ct expression"
        hooks = ("hook ingress", "hook egress") if clients.client_hooks == "device" else (
            "hook input", "hook output")
        assert all(h in ruleset for h in hooks), ruleset


def test_replies_to_what_a_client_opened_come_back(clients: Mesh) -> None:
    b = OVERLAY["b"]
    assert clients.eventually("a", "tcp", b, 8080)
    assert clients.eventually("a", "udp", b, 5353)
    assert clients.eventually("a", "tcp", N_IP, 8080)  # through the router
    assert clients.hosts["c"].ping(b, count=2, timeout_s=1)  # echo replies to c's pings
    # An ICMP error about a's own datagram (b has no listener there) reaches a's socket:
    # how PMTU discovery's "fragmentation needed" gets in too.
    res = clients.hosts["a"].run([sys.executable, "-c", UDP_REFUSED, b, str(UNANSWERED_UDP)],
                                 check=False, timeout=20)
    assert res.returncode == 0, "b's port unreachable did not reach a"


def test_a_peer_opens_only_what_the_clients_policy_allows(clients: Mesh) -> None:
    assert clients.eventually("b", "tcp", OVERLAY["a"], 7070)  # allowed by a's policy
    assert not clients.probe("b", "tcp", OVERLAY["a"], 7171)  # listening, not allowed
    assert not clients.probe("b", "tcp", OVERLAY["c"], 7070)
    assert not clients.hosts["b"].ping(OVERLAY["a"], count=1, timeout_s=BLOCKED_TIMEOUT)


def test_only_the_opened_udp_flow_is_answered_until_it_expires(clients: Mesh) -> None:
    a_port, other_a_port, b_port = 40001, 40002, UNANSWERED_UDP
    clients.hosts["a"].run([sys.executable, "-c", UDP_OPEN, str(a_port), OVERLAY["b"],
                            str(b_port)])
    # A policy update in between keeps the flows open (the table is not recreated).
    clients.apply_client("a", dataclasses.replace(A_NETMAP, version=2),
                         FlowTimeouts(udp=UDP_TIMEOUT))
    got = _udp_from_b(clients, [(b_port, a_port, "reply"), (b_port + 1, a_port, "other-port"),
                                (b_port, other_a_port, "other-dst")], [a_port, other_a_port])
    assert got == {"reply"}
    # The entry ages out UDP_TIMEOUT after a's last datagram; then b is a stranger again.
    wait_until(lambda: f". {b_port} . {a_port}" not in _flows(clients, "a"),
               UDP_TIMEOUT + 10, "a's UDP flow to expire")
    assert _udp_from_b(clients, [(b_port, a_port, "late")], [a_port]) == set()


def test_a_reply_too_big_for_the_tunnel_arrives_whole_and_only_to_its_flow(
        clients: Mesh) -> None:
    # Bigger than the tunnel's MTU, so b's kernel sends it in fragments; on the device hooks
    # a's ACL sees them before reassembly.
    a_port, other_a_port, b_port = 40003, 40004, UNANSWERED_UDP
    clients.hosts["a"].run([sys.executable, "-c", UDP_OPEN, str(a_port), OVERLAY["b"],
                            str(b_port)])
    big, stray = "r" * 4000, "s" * 4000
    got = _udp_from_b(clients, [(b_port, a_port, big), (b_port, other_a_port, stray)],
                      [a_port, other_a_port])
    assert got == {big}
