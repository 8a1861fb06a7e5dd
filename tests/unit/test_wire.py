"""The wire contract: what the models accept, and that whatever they accept renders to UAPI and
nftables text that parses back to the same values (so nothing accepted can inject a statement).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import re

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from wiremesh.agent.dataplane import desired_peers
from wiremesh.core.models import PortRange
from wiremesh.core.wire import (
    NETMAP,
    BadMessage,
    FullMessage,
    InboundRule,
    Netmap,
    NetmapPeer,
    check_endpoint,
    check_key,
    check_name,
    check_prefix,
    encode_message,
    parse_message,
)
from wiremesh.firewall.render import RenderError, render
from wiremesh.wg.backend import WgError, WgPeerConfig
from wiremesh.wg.uapi import parse_get, render_set

KEYS = [base64.b64encode(bytes([i]) * 32).decode() for i in range(1, 6)]
# Characters an attacker would try: line breaks, nft/UAPI syntax, other scripts' digits.
HOSTILE = st.sampled_from(["\n", "\r", "\x00", " ", "=", ";", "{", "}", '"', "#", "\u0665",
                           "\u0661", "\uff11", "\u00e9", "[", "]", ":", "/", "-", "."])


def spiced(base: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Valid-looking text, sometimes with a hostile character put in somewhere."""
    @st.composite
    def draw(d) -> str:
        s = d(base)
        if d(st.integers(0, 9)) == 5:  # hypothesis favours the ends of a range
            i = d(st.integers(0, len(s)))
            s = s[:i] + d(HOSTILE) + s[i:]
        return s
    return draw()


names = spiced(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True))
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(1, 65535)
endpoints = spiced(st.one_of(
    ipv4, st.builds(lambda a, p: f"{a}:{p}", ipv4, ports),
    st.builds(lambda a, p: f"[{a}]:{p}", ipv6, ports)))
keys = spiced(st.sampled_from(KEYS))
overlay = spiced(st.builds(lambda i: str(ipaddress.IPv4Address(0x64400000 + i)),
                           st.integers(1, 4000)))
port_ranges = st.one_of(ports, st.sampled_from([0, 65536, True]),
                        spiced(st.builds(lambda a, b: f"{min(a, b)}-{max(a, b)}", ports, ports)))


@st.composite
def raw_netmaps(draw) -> dict:
    """A netmap as it could arrive on the wire (often invalid)."""
    peers = draw(st.lists(st.fixed_dictionaries({
        "public_key": keys, "name": names, "overlay_ip": overlay,
        "endpoints": st.lists(endpoints, max_size=3)}), max_size=4,
        unique_by=lambda p: p["public_key"]))
    inbound = draw(st.lists(st.fixed_dictionaries({
        "src": overlay,
        "proto": st.sampled_from(["all", "tcp", "udp", "icmp"] * 3 + ["tcp\n"]),
        "ports": st.lists(port_ranges, max_size=3)}), max_size=6))
    return {"version": draw(st.integers(0, 10**6)), "peer_id": 1, "name": draw(names),
            "overlay_ip": draw(overlay), "peers": peers, "inbound": inbound}


def accepted(raw: dict) -> Netmap | None:
    try:
        nm = parse_message(json.dumps({"type": "full", "netmap": raw})).netmap
    except BadMessage:
        event("refused")
        return None
    event("accepted")
    return nm


UAPI_LINE = re.compile(r"set=1|replace_peers=true|remove=true|replace_allowed_ips=true"
                       r"|public_key=[0-9a-f]{64}|persistent_keepalive_interval=[0-9]+"
                       r"|endpoint=(\[[0-9a-f:.]+\]|[0-9.]+):[0-9]+"
                       r"|allowed_ip=[0-9a-f:.]+/[0-9]+")


@settings(max_examples=200, deadline=None)
@given(raw_netmaps())
def test_accepted_netmaps_render_to_uapi_that_parses_back(raw: dict) -> None:
    nm = accepted(raw)
    if nm is None:
        return
    want = desired_peers(nm)
    body = render_set(list(want.values()), [], replace_all=True)
    lines = body.split("\n")
    assert lines[-2:] == ["", ""]
    for line in lines[:-2]:
        assert UAPI_LINE.fullmatch(line), line
    assert sum(line.startswith("public_key=") for line in lines) == len(want)
    got = parse_get(body)
    assert set(got.peers) == set(want)
    for key, p in want.items():
        assert got.peers[key].endpoint == p.endpoint
        assert tuple(got.peers[key].allowed_ips) == p.allowed_ips


def _elements(script: str) -> dict[str, list[str]]:
    out = {}
    for m in re.finditer(r"\tset (\w+) \{\n(.*?)\n\t\}", script, re.S):
        out[m[1]] = [ln.strip().rstrip(",") for ln in m[2].splitlines()
                     if ln.startswith("\t\t\t")]
    return out


def _rule_admits(nm: Netmap, src: str, proto: str, port: int) -> bool:
    return any(r.src == src and (r.proto == "all" or (r.proto == proto and (
        proto == "icmp" or not r.ports or any(p.contains(port) for p in r.ports))))
        for r in nm.inbound)


def _set_admits(sets: dict[str, list[str]], src: str, proto: str, port: int) -> bool:
    if src in sets["in_any"] or (proto == "icmp" and src in sets["in_icmp"]):
        return True
    if proto not in ("tcp", "udp"):
        return False
    for e in sets[f"in_{proto}"]:
        ip, rng = e.split(" . ")
        r = PortRange.parse(rng.replace("0-", "1-", 1) if rng.startswith("0-") else rng)
        if ip == src and r.contains(port):
            return True
    return False


@settings(max_examples=200, deadline=None)
@given(raw_netmaps())
def test_accepted_netmaps_render_to_nft_sets_that_parse_back(raw: dict) -> None:
    nm = accepted(raw)
    if nm is None:
        return
    script = render(nm, "wm0")
    assert script.splitlines()[0] == (f"# wiremesh ruleset for {nm.name} ({nm.overlay_ip}), "
                                      f"netmap version {nm.version}")
    sets = _elements(script)
    for name, elements in sets.items():
        for e in elements:
            parts = e.split(" . ")
            ipaddress.IPv4Address(parts[0])  # each element parses back
            assert name.startswith(("in_", "probe", "fwd_", "masq")), name
    # The sets admit exactly what the rules admit, probed at every range edge.
    probes = {1, 65535} | {x for r in nm.inbound for p in r.ports
                           for x in (p.start - 1, p.start, p.end, p.end + 1) if 0 < x < 65536}
    srcs = {r.src for r in nm.inbound}
    for src in srcs:
        for proto in ("tcp", "udp", "icmp"):
            for port in probes:
                assert _rule_admits(nm, src, proto, port) == _set_admits(sets, src, proto, port)
    assert {e.split(" . ")[0] for es in sets.values() for e in es} <= srcs


@pytest.mark.parametrize("bad", ["a\nb", "a\r", "a b", "-a", "", "a" * 64, "\u0665", "é"])
def test_bad_names_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        check_name(bad)


@pytest.mark.parametrize("bad", [
    "192.0.2.1:51820\n", "192.0.2.1:\u0665\u0661", "\u0661\u0669\u0662.0.2.1", "192.0.2.1:0",
    "192.0.2.1:65536", "[192.0.2.1]:1", "fd00::1:1:2:3:4:5:6:7", "[fd00::1%eth0]:1",
    "host:1", "192.0.2.1:+1", "192.0.2.1: 1", " 192.0.2.1", "[fd00::1]"])
def test_bad_endpoints_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        check_endpoint(bad)


@pytest.mark.parametrize("given_,canonical", [
    ("192.0.2.1:51820", "192.0.2.1:51820"), ("[FD00:0::1]:7", "[fd00::1]:7"),
    ("fd00:0::1", "fd00::1"), ("192.0.2.1", "192.0.2.1"), ("192.0.2.1:00080", "192.0.2.1:80")])
def test_endpoints_canonical(given_: str, canonical: str) -> None:
    assert check_endpoint(given_) == canonical


def test_prefix_and_key_checks() -> None:
    assert check_prefix("198.18.0.0/16") == "198.18.0.0/16"
    for bad in ["198.18.0.1/16", "198.18.0.0/16\n", "\u0661.0.0.0/8",
                "fd00::%1/8", "fe80::%eth0/64"]:  # the scoped ones passed
        with pytest.raises(ValueError):
            check_prefix(bad)
    # ipaddress reads these as networks; each was stored as another text than given (a
    # forgotten length passed as one host).
    for bad in ["198.18.0.0", "fd00::", "198.18.0.0/016", "198.18.0.0/255.255.0.0",
                "198.18.0.0/0.0.255.255", "fd00::/08"]:
        with pytest.raises(ValueError, match="ADDRESS/LENGTH"):
            check_prefix(bad)
    assert check_prefix("0.0.0.0/0") == "0.0.0.0/0"
    assert check_prefix("fd00:0::/8") == "fd00::/8"
    with pytest.raises(ValueError, match="canonical"):
        check_key(KEYS[0][:42] + "B=")


def test_renderers_refuse_raw_values() -> None:
    """Values that never went through the wire types are refused where they would become
    UAPI or nft text."""
    with pytest.raises(WgError):
        WgPeerConfig(KEYS[0], ("100.64.0.2/32",), "192.0.2.1:1\npublic_key=" + "0" * 64)
    with pytest.raises(WgError):
        WgPeerConfig(KEYS[0], ("100.64.0.2/32\nremove=true",))
    with pytest.raises(WgError):
        WgPeerConfig(KEYS[0], (), "192.0.2.1")  # an endpoint needs a port
    with pytest.raises(WgError):
        render_set([], [], listen_port=-1)
    base = Netmap(version=1, peer_id=1, name="a", overlay_ip="100.64.0.1")
    for bad in [Netmap(version=1, peer_id=1, name="a\n}", overlay_ip="100.64.0.1"),
                Netmap(version=1, peer_id=1, name="a", overlay_ip="100.64.0.1\n"),
                Netmap(**{**base.__dict__, "inbound": frozenset(
                    {InboundRule("100.64.0.2", "tcp", ("22\n",))})}),  # type: ignore[arg-type]
                Netmap(**{**base.__dict__, "inbound": frozenset(
                    {InboundRule("100.64.0.2", "tcp; drop", ())})})]:  # type: ignore[arg-type]
        with pytest.raises(RenderError):
            render(bad, "wm0")


def test_message_errors_name_the_field_on_one_line() -> None:
    peer = NetmapPeer(KEYS[0], "b", "100.64.0.2", ("192.0.2.1:1",))
    good = json.loads(encode_message(FullMessage(netmap=Netmap(
        version=1, peer_id=1, name="a", overlay_ip="100.64.0.1", peers={peer.public_key: peer}))))
    good["netmap"]["peers"][0]["endpoints"] = ["192.0.2.1:1\nremove=true"]
    with pytest.raises(BadMessage, match=r"netmap\.peers\..*\.endpoints\.0: .*bad endpoint") as e:
        parse_message(json.dumps(good))
    assert "\n" not in str(e.value)
    good["netmap"]["peers"] = [peer.__dict__ | {"endpoints": []}] * 2
    with pytest.raises(BadMessage, match="listed twice"):
        parse_message(json.dumps(good))
    for junk in [b"", b"[]", b"{}", b'{"type":"full"}', b'{"type":"nope"}', b"\xff"]:
        with pytest.raises(BadMessage):
            parse_message(junk)


def test_saved_netmap_form_is_the_wire_form() -> None:
    peer = NetmapPeer(KEYS[0], "b", "100.64.0.2", ("[fd00::1]:1",))
    nm = Netmap(version=3, peer_id=1, name="a", overlay_ip="100.64.0.1",
                peers={peer.public_key: peer},
                inbound=frozenset({InboundRule("100.64.0.2", "tcp", (PortRange(22, 22),))}))
    assert NETMAP.validate_python(NETMAP.dump_python(nm, mode="json")) == nm


@given(st.ip_addresses(v=4), st.integers(0, 32), st.integers(0, 65535))
def test_ipv4_fast_paths_agree_with_ipaddress(ip, length, port):
    """check_prefix/check_endpoint take a shortcut for canonical IPv4; it must say exactly
    what ipaddress says (same canonical text, same refusals)."""
    net = ipaddress.ip_network(f"{ip}/{length}", strict=False)
    with pytest.raises(ValueError):  # a padded length is not the form shown back
        check_prefix(f"{net.network_address}/0{length}")
    for text in (str(net), f"{ip}/{length}"):
        try:
            expected = str(ipaddress.ip_network(text))
        except ValueError:
            with pytest.raises(ValueError):
                check_prefix(text)
        else:
            assert check_prefix(text) == expected
    for host in (str(ip), ".".join(f"{int(o):03d}" for o in str(ip).split("."))):
        text = f"{host}:{port}"
        if port >= 1 and host == str(ip):
            assert check_endpoint(text) == text
        else:
            with pytest.raises(ValueError):
                check_endpoint(text)


def _paths(doc: object, at: tuple = ()) -> list[tuple]:
    """Every place in a JSON document: dict keys and list indexes, outermost first."""
    out: list[tuple] = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(
        doc, list) else ()
    for k, v in items:
        out += [(*at, k), *_paths(v, (*at, k))]
    return out


_ROUTE = {"name": "r", "prefix": "198.18.0.0/16", "routers": [[KEYS[1], 100]]}
_PEER = {"public_key": KEYS[0], "name": "b", "overlay_ip": "100.64.0.2",
         "endpoints": ["192.0.2.1:51820"]}
_RULE = {"src": "100.64.0.2", "proto": "tcp", "ports": ["22", "80-90"]}
_DNS = {"domain": "mesh.internal", "zones": [{"zone": "corp.example",
                                              "nameservers": ["198.18.0.53"]}]}
MESSAGES = [
    {"type": "full", "netmap": {
        "version": 3, "peer_id": 1, "name": "a", "overlay_ip": "100.64.0.1", "peers": [_PEER],
        "inbound": [_RULE], "routes": [_ROUTE], "forward": [{**_RULE, "prefix": "198.18.0.0/16"}],
        "masquerade": ["198.18.0.0/16"], "relays": ["/api/v1/relay"], "dns": _DNS, "mtu": 1420}},
    {"type": "delta", "delta": {
        "from_version": 1, "to_version": 2, "upsert_peers": [_PEER], "remove_peers": [KEYS[2]],
        "add_inbound": [_RULE], "remove_inbound": [], "upsert_routes": [_ROUTE],
        "remove_routes": ["x"], "masquerade": [], "relays": ["wss://relay.example/r"],
        "dns": _DNS, "mtu": 1400, "name": "z", "overlay_ip": "100.64.0.9"}},
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(
        ["", "0", "65536", "1-0", "[fe80::1%eth0]:5", "1.2.3.4:", "300.1.1.1", KEYS[0],
         "A" * 44, "wss://", "ws://[::1", "http://a:99999/x", "fd00::/64"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3),
    max_leaves=8)


def test_the_seed_messages_are_valid() -> None:
    for m in MESSAGES:
        parse_message(json.dumps(m))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MESSAGES), st.data())
def test_a_message_with_any_field_replaced_parses_or_is_a_bad_message(message, data) -> None:
    # What the agent refuses must be a BadMessage (logged, the last netmap kept), whatever
    # a field turns into: another type, a huge number, a malformed address or URL.
    doc = json.loads(json.dumps(message))
    for _ in range(data.draw(st.integers(1, 3))):
        *parent, last = data.draw(st.sampled_from(_paths(doc)))
        target = doc
        for k in parent:
            target = target[k]
        target[last] = data.draw(JSON_VALUES)
    with contextlib.suppress(BadMessage):
        parse_message(json.dumps(doc))
