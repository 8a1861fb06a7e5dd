"""The one contract between server and agent, and the value types every boundary shares.

Value types (pydantic `Annotated` types; each validator returns the canonical form and refuses
anything else with a message naming the bad value):

- `Name`: ASCII `[A-Za-z0-9][A-Za-z0-9._-]{0,62}` (peers, groups, routes, policies, keys).
- `WgKey`: a WireGuard public key as `wg` prints it. It must be the canonical base64 of its 32
  bytes, so the same key can never be stored twice written differently; all-zero is refused.
- `Endpoint`: `IP`, `IP:PORT` or `[IPv6]:PORT`, ASCII only, in canonical form (`1.2.3.4:5`,
  `[fd00::1]:5`); an IPv6 address without a port is written bare. Any address WireGuard
  can be given (the agent's relay link gives it a loopback socket of its own).
- `PeerEndpoint`: an `Endpoint` other peers can be sent to (`check_peer_endpoint`): what a
  peer reports and a netmap lists. A bare address means the peer's listen port.
- `Prefix`: an IP network with no host bits set, canonical (`198.18.0.0/16`).
- `OverlayIP`: an IPv4 address (the overlay is IPv4).
- `Ports`: port ranges, written `22` or `"8000-8100"`.
- `DnsName`: a DNS domain (`mesh.internal`), lower case, without the trailing dot.

Wire messages. The netmap stream is NDJSON, one signed message a line (see `Signer`), each
message one of:

    {"type": "full",    "netmap": Netmap}
    {"type": "delta",   "delta": NetmapDelta}     applies only to netmap version from_version
    {"type": "ping",    "version": int}           keepalive; the version the server holds
    {"type": "deleted", "peer_id": int, "public_key": WgKey}   the peer no longer exists

`Netmap`, `NetmapPeer`, ... are frozen dataclasses: the policy compiler builds them at scale
without validation cost, and pydantic (`STREAM`, `NETMAP`) validates them from JSON and
serialises them to JSON in its Rust core. What crosses the wire is checked once on arrival
(`parse_message`), so the agent never writes anything to UAPI or nftables that did not pass
these types.

Adding to the contract: give a new dataclass field a default (old servers omit it; old agents
ignore unknown fields, see `_Message`), and add a new message as one more `_Message` subclass
in the `StreamMessage` union.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from wiremesh.core.ipam import OVERLAY_NET
from wiremesh.core.models import PortRange, Proto

# --- value types ---------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NAME_PATTERN = f"^{_NAME.pattern}$"  # for validators that take a pattern (URL paths)
_ASCII_DIGITS = re.compile(r"[0-9]{1,5}")


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{what}: expected a string, got {type(v).__name__}")
    return v


def check_name(v: Any) -> str:
    """A name (peer, group, route, policy): ASCII letters, digits, '.', '_', '-'."""
    s = _str(v, "name")
    if not _NAME.fullmatch(s):
        raise ValueError(f"bad name {s[:80]!r}: 1-63 ASCII letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return s


def check_peer_name(v: Any) -> str:
    """A name for a new peer, in lower case: a `Name` that is also a host name under the
    mesh domain (`NAME.mesh.internal`), since peers answer each other's names. DNS ignores
    case, so `WEB1` is `web1`: kept as given, it could be a second peer answering for the
    first one's name. All digits would read as a peer id wherever a peer is named."""
    s = check_name(v)
    if s.endswith(".") or not _is_dns_name(s.lower()):
        raise ValueError(f"bad peer name {s[:80]!r}: a peer's name is also its DNS name, so "
                         "dot-separated labels of ASCII letters, digits, '_' or '-', each "
                         "ending in a letter, digit or '_' (no trailing dot)")
    if s.isdigit():
        raise ValueError(f"bad peer name {s!r}: all digits would read as a peer id")
    return s.lower()


def key_bytes(v: Any) -> bytes:
    """The 32 bytes of a WireGuard key written in canonical base64 (as `wg` prints it)."""
    s = _str(v, "key")
    if len(s) != 44 or not s.isascii():
        raise ValueError("a WireGuard key is 44 characters of base64 ending in '='")
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a WireGuard key is 44 characters of base64 ending in '='") from None
    if len(raw) != 32 or base64.b64encode(raw).decode() != s:
        raise ValueError(f"key {s!r} is not the canonical base64 of 32 bytes "
                         f"(that would be {base64.b64encode(raw[:32]).decode()!r})")
    return raw


def check_key(v: Any) -> str:
    """A WireGuard public key: canonical base64 of 32 bytes, not all zero."""
    if key_bytes(v) == bytes(32):
        raise ValueError("the all-zero key is not a valid public key")
    return _str(v, "key")


def is_canonical_ipv4(text: str) -> bool:
    """Whether `text` is an IPv4 address exactly as ipaddress prints it. A fast path for the
    checks below and the gateway's feed (ipaddress takes ~15 us a parse, and the JIT gateway
    checks an endpoint and a prefix per install); anything else takes the slow path, which
    decides. inet_pton/ntop are
    pure conversions: the round trip holds only for plain dotted decimal without leading
    zeros, the form both print."""
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text)) == text
    except OSError:
        return False


def _port(text: str, whole: str) -> int:
    if not _ASCII_DIGITS.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"bad endpoint {whole!r}: port must be 1..65535")
    return int(text)


def check_relay(v: Any) -> str:
    """Where a relay is: a ws(s):// or http(s):// URL with a host, or a path on the server's
    own URL (its embedded relay), ASCII without spaces."""
    s = _str(v, "relay")
    parts = urlsplit(s) if s.isascii() and s.isprintable() and " " not in s else None
    ok = parts is not None and len(s) <= 512 and (
        (parts.scheme in ("ws", "wss", "http", "https") and bool(parts.hostname))
        or (not parts.scheme and not parts.netloc and s.startswith("/")))
    if not ok:
        raise ValueError(f"bad relay {s[:80]!r}: expected wss://HOST[:PORT]/PATH or /PATH")
    return s


def check_endpoint(v: Any) -> str:
    """`IP`, `IP:PORT` or `[IPv6]:PORT` (ASCII only), returned in canonical form."""
    s = _str(v, "endpoint")
    if not s.isascii() or not s.isprintable() or len(s) > 64:
        raise ValueError(f"bad endpoint {s[:80]!r}: expected IP, IP:PORT or [IPv6]:PORT "
                         "in ASCII")
    host, port = s, None
    addr, colon, rest = s.partition(":")
    if colon and ":" not in rest and is_canonical_ipv4(addr):
        return f"{addr}:{_port(rest, s)}"
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad endpoint {s!r}: expected [IPv6]:PORT")
        port = _port(rest, s)
    elif s.count(":") == 1:
        host, rest = s.split(":")
        port = _port(rest, s)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad endpoint {s!r}: {host!r} is not an IP address") from None
    if s.startswith("[") and ip.version != 6:
        raise ValueError(f"bad endpoint {s!r}: brackets are for IPv6 addresses")
    if ip.version == 6 and ip.scope_id:
        raise ValueError(f"bad endpoint {s!r}: scoped IPv6 addresses are not supported")
    if port is None:
        return str(ip)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def endpoint_host_port(ep: str) -> tuple[str, int | None]:
    """Split a canonical endpoint into address and port (None when it has none)."""
    if ep.startswith("["):
        host, _, port = ep[1:].partition("]:")
        return host, int(port)
    if ep.count(":") == 1:
        host, port = ep.split(":")
        return host, int(port)
    return ep, None


# Addresses no peer can be reached at, whatever reports them: (network, prefix length, why).
_UNUSABLE_V4 = tuple(
    (int(ipaddress.IPv4Address(net)), plen, why) for net, plen, why in (
        ("0.0.0.0", 8, "an unspecified address (0.0.0.0/8) is no destination"),
        ("127.0.0.0", 8, "a loopback address (127.0.0.0/8): every other peer would send to "
                         "itself"),
        (str(OVERLAY_NET.network_address), OVERLAY_NET.prefixlen,
         f"inside the overlay {OVERLAY_NET}: WireGuard would send the tunnel into itself"),
        ("224.0.0.0", 4, "a multicast address (224.0.0.0/4)"),
        ("255.255.255.255", 32, "the broadcast address"),
    ))


# First octets of those networks: every other address is decided by one set lookup (a
# netmap of 100,000 peers lists some 200,000 endpoints).
_SUSPECT_OCTETS = frozenset(o for net, plen, _ in _UNUSABLE_V4
                            for o in range(net >> 24, (net >> 24) + (1 << max(8 - plen, 0))))


def _ipv4_problem(n: int) -> str | None:
    if n >> 24 not in _SUSPECT_OCTETS:
        return None
    for net, plen, why in _UNUSABLE_V4:
        if n >> (32 - plen) == net >> (32 - plen):
            return why
    return None


def endpoint_problem(ep: str) -> str | None:
    """Why the canonical endpoint `ep` (as `check_endpoint` returns it) cannot be a peer's
    endpoint for other peers, or None when it can: the one rule for what peers report and
    what netmaps list."""
    if not ep.startswith("[") and ep.count(":") <= 1:
        return _ipv4_problem(int.from_bytes(socket.inet_aton(ep.partition(":")[0]), "big"))
    ip = ipaddress.IPv6Address(endpoint_host_port(ep)[0])
    if ip.ipv4_mapped is not None:
        why = _ipv4_problem(int(ip.ipv4_mapped))
        return None if why is None else f"IPv4-mapped, {why}"
    if ip.is_unspecified:
        return "an unspecified address (::) is no destination"
    if ip.is_loopback:
        return "a loopback address (::1): every other peer would send to itself"
    if ip.is_multicast:
        return "a multicast address (ff00::/8)"
    if ip.is_link_local:
        return "a link-local address (fe80::/10) needs an interface, which other peers lack"
    return None


def check_peer_endpoint(v: Any) -> str:
    """An endpoint other peers can be sent to: `check_endpoint`, and not an unspecified,
    loopback, multicast, broadcast, IPv6 link-local or overlay address. A bare address
    (no port) stays allowed: it means the peer's listen port."""
    s = check_endpoint(v)
    why = endpoint_problem(s)
    if why is not None:
        raise ValueError(f"bad endpoint {v!r}: {why}")
    return s


def usable_endpoints(endpoints: tuple[str, ...]) -> tuple[str, ...]:
    """Well-formed `endpoints` (canonical) less those `endpoint_problem` refuses."""
    if all(endpoint_problem(e) is None for e in endpoints):
        return endpoints
    return tuple(e for e in endpoints if endpoint_problem(e) is None)


def check_prefix(v: Any) -> str:
    """An IP network with no host bits set, canonical."""
    s = _str(v, "prefix")
    if not s.isascii() or len(s) > 64:
        raise ValueError(f"bad prefix {s[:80]!r}: expected an ASCII IP network such as "
                         "198.18.0.0/16")
    addr, _, length = s.partition("/")
    if length.isdigit() and length[0] != "0" and int(length) <= 32 and is_canonical_ipv4(addr):
        host_bits = int.from_bytes(socket.inet_aton(addr), "big") & (0xFFFFFFFF >> int(length))
        if not host_bits:
            return s
    if "%" in s:  # ip_network keeps a scope (fd00::%1/8): no route, UAPI or nft takes one
        raise ValueError(f"bad prefix {s!r}: scoped IPv6 networks are not supported")
    if not length.isdigit() or length != str(int(length)):
        # ip_network would take a bare address as /32 (a forgotten length passing as one
        # host), a netmask or hostmask, and a padded length: none is the form shown back.
        raise ValueError(f"bad prefix {s!r}: expected ADDRESS/LENGTH with a decimal length, "
                         "such as 198.18.0.0/16 (one address: /32)")
    try:
        return str(ipaddress.ip_network(s))
    except ValueError as e:
        raise ValueError(f"bad prefix {s!r}: {e}") from None


def check_ipv4(v: Any) -> str:
    s = _str(v, "address")
    try:
        if not s.isascii():
            raise ValueError
        return str(ipaddress.IPv4Address(s))
    except ValueError:
        raise ValueError(f"bad address {s[:80]!r}: expected an IPv4 address") from None


_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def _is_dns_name(canon: str) -> bool:
    """`canon` (lower case, no trailing dot) is a domain name DNS can carry."""
    return bool(canon) and len(canon) <= 253 and all(
        _LABEL.fullmatch(label) for label in canon.split("."))


def check_dns_name(v: Any) -> str:
    """A DNS domain in canonical form: ASCII labels, lower case, no trailing dot."""
    s = _str(v, "domain")
    canon = s.lower().removesuffix(".")
    if not s.isascii() or not _is_dns_name(canon):
        raise ValueError(f"bad domain {s[:80]!r}: expected dot-separated labels of ASCII "
                         "letters, digits, '-' or '_' (such as mesh.internal)")
    return canon


def parse_port_range(v: Any) -> PortRange:
    """`22`, `"22"` or `"8000-8100"` (ASCII digits only)."""
    if isinstance(v, PortRange):
        return v
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError(f"bad port {v!r}: expected N or \"N-M\" with 1..65535")
    return PortRange.parse(v)


# Each is a strict str with our check after it: serialised as a plain str (fast, in Rust),
# while the JSON schema still says what is allowed.
Name = Annotated[str, Strict(), AfterValidator(check_name),
                 WithJsonSchema({"type": "string", "pattern": NAME_PATTERN})]
PEER_NAME_PATTERN = (r"^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
                     r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*$")
PeerName = Annotated[str, Strict(), AfterValidator(check_peer_name),
                     WithJsonSchema({"type": "string", "maxLength": 63,
                                     "pattern": PEER_NAME_PATTERN})]
WgKey = Annotated[str, Strict(), AfterValidator(check_key),
                  WithJsonSchema({"type": "string", "minLength": 44, "maxLength": 44})]
Endpoint = Annotated[str, Strict(), AfterValidator(check_endpoint),
                     WithJsonSchema({"type": "string", "maxLength": 64})]
PeerEndpoint = Annotated[str, Strict(), AfterValidator(check_peer_endpoint),
                         WithJsonSchema({"type": "string", "maxLength": 64})]
Prefix = Annotated[str, Strict(), AfterValidator(check_prefix),
                   WithJsonSchema({"type": "string", "maxLength": 64})]
OverlayIP = Annotated[str, Strict(), AfterValidator(check_ipv4),
                      WithJsonSchema({"type": "string", "maxLength": 15})]
PortRangeT = Annotated[PortRange, PlainValidator(parse_port_range),
                       PlainSerializer(str, return_type=str),
                       WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1,
                                                  "maximum": 65535},
                                                 {"type": "string", "maxLength": 11}]})]
Ports = tuple[PortRangeT, ...]
Version = Annotated[int, Field(ge=0)]
Metric = Annotated[int, Field(ge=0, le=1_000_000)]
# A WireGuard interface MTU: 1280 is IPv6's minimum (what an overlay carrying IPv6 needs),
# 9000 a jumbo frame's payload less nothing: beyond that no underlay carries the packets.
MTU_MIN, MTU_MAX = 1280 - 80, 9000
# wireguard-go's and the kernel's default: a 1500-byte underlay less 80 bytes of IPv6, UDP
# and WireGuard headers.
DEFAULT_MTU = 1420
Mtu = Annotated[int, Strict(), Field(ge=MTU_MIN, le=MTU_MAX)]
# A netmap peer's endpoints: a malformed one refuses the netmap (as any malformed value); a
# well-formed one no peer can be sent to (`endpoint_problem`; what an older server stored
# and still sends) is left out: refusing the netmap would cut this agent off every peer.
Endpoints = Annotated[tuple[Endpoint, ...], AfterValidator(usable_endpoints)]
Relay = Annotated[str, Strict(), AfterValidator(check_relay),
                  WithJsonSchema({"type": "string", "maxLength": 512})]
DnsName = Annotated[str, Strict(), AfterValidator(check_dns_name),
                    WithJsonSchema({"type": "string", "maxLength": 253})]
IPv4 = Annotated[str, Strict(), AfterValidator(check_ipv4),
                 WithJsonSchema({"type": "string", "maxLength": 15})]

# --- the netmap --------------------------------------------------------------------------------


def _keyed_by(attr: str) -> Any:
    """A dict of records by one of their fields, sent as a plain list of the records."""

    def from_list(v: Any) -> Any:
        if not isinstance(v, list | tuple):
            return v
        out: dict[Any, Any] = {}
        for i, item in enumerate(v):
            k = item.get(attr) if isinstance(item, dict) else getattr(item, attr, None)
            k = k if isinstance(k, str) else f"(entry {i} has no valid {attr})"
            if k in out:
                raise ValueError(f"{attr} {k!r} is listed twice")
            out[k] = item
        return out

    return BeforeValidator(from_list)


def _values(d: dict[str, Any]) -> list[Any]:
    return list(d.values())


@dataclass(frozen=True)
class NetmapPeer:
    public_key: WgKey
    name: Name
    overlay_ip: OverlayIP
    endpoints: Endpoints = ()


@dataclass(frozen=True, order=True)
class InboundRule:
    """`src` (an overlay IP) may open connections to this peer with `proto` on `ports`."""

    src: OverlayIP
    proto: Proto
    ports: Ports = ()


@dataclass(frozen=True, order=True)
class ForwardRule:
    """On a router peer: `src` may open connections into `prefix` with `proto` on `ports`."""

    src: OverlayIP
    prefix: Prefix
    proto: Proto
    ports: Ports = ()


@dataclass(frozen=True)
class RouteEntry:
    """A network this peer may use, with candidate routers as (public key, metric)."""

    name: Name
    prefix: Prefix
    routers: tuple[tuple[WgKey, Metric], ...]


# .internal is reserved for private use (ICANN, 2024): it can never be a public name.
DEFAULT_MESH_DOMAIN = "mesh.internal"


@dataclass(frozen=True)
class DnsZone:
    """Split DNS: names in `zone` are asked of `nameservers` (typically behind a route)."""

    zone: DnsName
    nameservers: tuple[IPv4, ...]


@dataclass(frozen=True)
class DnsConfig:
    """Names for peers: every peer this one may see answers as `<name>.<domain>` (server-wide,
    set by the hub)."""

    domain: DnsName = DEFAULT_MESH_DOMAIN
    zones: tuple[DnsZone, ...] = ()


@dataclass(frozen=True)
class Netmap:
    version: Version
    peer_id: int
    name: Name
    overlay_ip: OverlayIP
    peers: Annotated[dict[WgKey, NetmapPeer], _keyed_by("public_key"),
                     PlainSerializer(_values, return_type=list[NetmapPeer])] = field(
        default_factory=dict)
    inbound: frozenset[InboundRule] = frozenset()
    routes: Annotated[dict[Name, RouteEntry], _keyed_by("name"),
                      PlainSerializer(_values, return_type=list[RouteEntry])] = field(
        default_factory=dict)
    forward: frozenset[ForwardRule] = frozenset()
    masquerade: frozenset[Prefix] = frozenset()  # prefixes this router masquerades into
    # Relays to reach peers through when direct fails, in order of preference (server-wide,
    # set by the hub): standalone relays' URLs, and the embedded relay as a path.
    relays: tuple[Relay, ...] = ()
    dns: DnsConfig = DnsConfig()
    # The mesh-wide WireGuard interface MTU (server-wide, set by the hub; None only from a
    # server that predates it). An agent started with --mtu overrides it for itself.
    mtu: Mtu | None = None


@dataclass(frozen=True)
class NetmapDelta:
    from_version: Version
    to_version: Version
    upsert_peers: tuple[NetmapPeer, ...] = ()
    remove_peers: tuple[WgKey, ...] = ()
    add_inbound: frozenset[InboundRule] = frozenset()
    remove_inbound: frozenset[InboundRule] = frozenset()
    upsert_routes: tuple[RouteEntry, ...] = ()
    remove_routes: tuple[Name, ...] = ()
    add_forward: frozenset[ForwardRule] = frozenset()
    remove_forward: frozenset[ForwardRule] = frozenset()
    masquerade: frozenset[Prefix] | None = None  # None = unchanged
    relays: tuple[Relay, ...] | None = None  # None = unchanged
    dns: DnsConfig | None = None  # None = unchanged
    mtu: Mtu | None = None  # None = unchanged
    name: Name | None = None
    overlay_ip: OverlayIP | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.upsert_peers or self.remove_peers or self.add_inbound or self.remove_inbound
            or self.upsert_routes or self.remove_routes or self.add_forward
            or self.remove_forward or self.masquerade is not None or self.name is not None
            or self.overlay_ip is not None or self.relays is not None
            or self.dns is not None
            or self.mtu is not None
        )


def check_netmap(n: Netmap) -> Netmap:
    """What the field types cannot say: map keys agree with the values they index."""
    for k, p in n.peers.items():
        if k != p.public_key:
            raise ValueError(f"netmap peer listed under {k!r} has key {p.public_key!r}")
    for k, r in n.routes.items():
        if k != r.name:
            raise ValueError(f"netmap route listed under {k!r} is named {r.name!r}")
    return n


# --- stream messages -----------------------------------------------------------------------


class _Message(BaseModel):
    # Unknown fields are ignored so a newer server can add some without breaking older agents.
    model_config = ConfigDict(frozen=True, extra="ignore")


class FullMessage(_Message):
    type: Literal["full"] = "full"
    netmap: Annotated[Netmap, AfterValidator(check_netmap)]


class DeltaMessage(_Message):
    type: Literal["delta"] = "delta"
    delta: NetmapDelta

    @model_validator(mode="after")
    def _forward(self) -> DeltaMessage:
        if self.delta.to_version < self.delta.from_version:
            raise ValueError("delta goes back in versions")
        return self


class PingMessage(_Message):
    type: Literal["ping"] = "ping"
    version: Version


class DeletedMessage(_Message):
    type: Literal["deleted"] = "deleted"
    peer_id: int
    public_key: WgKey


StreamMessage = Annotated[FullMessage | DeltaMessage | PingMessage | DeletedMessage,
                          Field(discriminator="type")]
STREAM: TypeAdapter[StreamMessage] = TypeAdapter(StreamMessage)
NETMAP: TypeAdapter[Netmap] = TypeAdapter(Annotated[Netmap, AfterValidator(check_netmap)])
DNS_CONFIG: TypeAdapter[DnsConfig] = TypeAdapter(DnsConfig)


class BadMessage(ValueError):
    """A stream message (or saved netmap) that is not what the contract allows."""


def describe(e: ValidationError) -> str:
    """A validation error on one line: each bad field with what is wrong, no input echo."""
    parts = []
    for err in e.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "message"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    more = e.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_message(data: bytes | str) -> StreamMessage:
    """Validate one stream message; raises BadMessage naming what is wrong."""
    try:
        return STREAM.validate_json(data)
    except ValidationError as e:
        raise BadMessage(describe(e)) from None


def encode_message(msg: StreamMessage) -> bytes:
    """One stream message as JSON (no newline). Serialised by its own class: going through
    the `StreamMessage` union makes pydantic try each member, several times slower."""
    return msg.model_dump_json().encode()


# --- signed stream lines -------------------------------------------------------------------
#
# Each stream line is `{"sig":"<base64 Ed25519 signature>","msg":<message JSON>}`. The server
# signs CONTEXT + the receiving peer's 32-byte public key + the exact bytes of `msg`, so a
# line verifies only for the peer it was made for (one peer's netmap or `deleted` cannot be
# replayed to another) and only against the server key the agent pinned at enrolment (a
# stolen TLS key or a misissued certificate cannot feed it a netmap). The envelope's layout
# is fixed, so the agent finds the signed bytes by position, without parsing them first.

CONTEXT = b"wiremesh netmap stream v1\0"
_SIG_LEN = 88  # base64 of 64 bytes
_HEAD, _MID, _TAIL = b'{"sig":"', b'","msg":', b"}"

# An agent may ask for lines authenticated with a MAC instead (`?mac=1`):
# `{"mac":"<base64 HMAC-SHA256>","msg":<message JSON>}` under a key only this agent and the
# server can compute. The server's "stream key" is an X25519 key derived from its signing
# key (so every replica has it) and bound to it by a signature the agent checks against the
# key it pinned; the MAC key is HKDF of the X25519 agreement between the stream key and the
# agent's WireGuard key. A MAC is one hash instead of an Ed25519 signature (tens of us per
# line on the server, more to verify on the agent), with the same guarantees for the agent:
# only the holder of the pinned key's secret made the line, and only for this peer.
MAC_CONTEXT = b"wiremesh netmap stream mac v1\0"
STREAM_KEY_CONTEXT = b"wiremesh stream key v1\0"
_MAC_LEN = 44  # base64 of 32 bytes
_MAC_HEAD = b'{"mac":"'


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(secret)


def _mac_key(own: X25519PrivateKey, other: bytes, agent_key: bytes, stream_key: bytes) -> bytes:
    try:
        shared = own.exchange(X25519PublicKey.from_public_bytes(other))
    except ValueError:  # a low-order point: no secret to agree on
        raise BadMessage("no stream key can be agreed with this key") from None
    return _hkdf(shared, MAC_CONTEXT + agent_key + stream_key)


def agent_mac_key(private_key: str, stream_key: str) -> bytes:
    """The agent's side of the MAC key, from its WireGuard private key and the server's
    stream key (checked with `verify_stream_key` when it was pinned)."""
    own = X25519PrivateKey.from_private_bytes(key_bytes(private_key))
    return _mac_key(own, key_bytes(stream_key), own.public_key().public_bytes_raw(),
                    key_bytes(stream_key))


# An enrolment carries `proof`: a MAC under the same agreed key over the setup key it
# uses, which only the holder of the enrolled public key's private key can make. Public
# keys are no secret (every netmap lists them), so without it anyone holding a shared setup
# key could "retry" another peer's enrolment and be handed that peer's credential.
ENROLL_PROOF_CONTEXT = b"wiremesh enroll proof v1\0"


def enroll_proof(mac_key: bytes, setup_key: str) -> str:
    """The proof (base64) an agent with MAC key `mac_key` sends with its enrolment."""
    return base64.b64encode(hmac.digest(
        mac_key, ENROLL_PROOF_CONTEXT + setup_key.encode(), "sha256")).decode()


def verify_stream_key(server_key: str, stream_key: str, signature: str) -> None:
    """Raises BadMessage unless `stream_key` is bound to the signing key `server_key`."""
    try:
        Ed25519PublicKey.from_public_bytes(key_bytes(server_key)).verify(
            base64.b64decode(signature, validate=True),
            STREAM_KEY_CONTEXT + key_bytes(stream_key))
    except (InvalidSignature, binascii.Error, ValueError):
        raise BadMessage(f"the stream key is not signed by the server key "
                         f"{fingerprint(server_key)}") from None


def fingerprint(public_key: str) -> str:
    """How people compare a server key: `SHA256:` + unpadded base64 of its digest."""
    digest = hashlib.sha256(key_bytes(public_key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class Signer:
    """The server's signing key (Ed25519, 32 raw bytes)."""

    def __init__(self, private_raw: bytes, mac_keys_held: int = 200_000) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(private_raw)
        self.public_key = base64.b64encode(self._key.public_key().public_bytes_raw()).decode()
        self.fingerprint = fingerprint(self.public_key)
        self._stream = X25519PrivateKey.from_private_bytes(
            _hkdf(private_raw, b"wiremesh stream x25519 v1\0"))
        self._stream_raw = self._stream.public_key().public_bytes_raw()
        self.stream_key = base64.b64encode(self._stream_raw).decode()
        self.stream_key_sig = base64.b64encode(
            self._key.sign(STREAM_KEY_CONTEXT + self._stream_raw)).decode()
        # peer key -> MAC key: one X25519 per peer, then a hash per line. Bounded: an entry
        # is ~100 bytes and a replica serves some tens of thousands of peers; past the bound
        # the least recently used goes (a deleted peer's, in time), one at a time.
        self._mac_keys = functools.lru_cache(maxsize=mac_keys_held)(self._agree_mac_key)

    @staticmethod
    def generate() -> bytes:
        return Ed25519PrivateKey.generate().private_bytes_raw()

    def sign_feed(self, peer_key: str, target: bytes, body: bytes) -> str:
        """The signature (base64) of a gateway feed answer: see `verify_feed`."""
        return base64.b64encode(self._key.sign(_feed_bytes(peer_key, target, body))).decode()

    def seal(self, peer_key: str, body: bytes) -> bytes:
        """One stream line carrying `body` for the peer with public key `peer_key`."""
        sig = self._key.sign(CONTEXT + key_bytes(peer_key) + body)
        return _HEAD + base64.b64encode(sig) + _MID + body + _TAIL + b"\n"

    def mac_key(self, peer_key: str) -> bytes:
        """The MAC key shared with the peer whose WireGuard public key is `peer_key`;
        raises BadMessage when that key agrees on nothing."""
        return self._mac_keys(peer_key)

    def _agree_mac_key(self, peer_key: str) -> bytes:
        raw = key_bytes(peer_key)
        return _mac_key(self._stream, raw, raw, self._stream_raw)

    def proves(self, peer_key: str, setup_key: str, proof: str) -> bool:
        """Did the holder of `peer_key`'s private key make enrolment proof `proof`?"""
        try:
            expected = enroll_proof(self.mac_key(peer_key), setup_key)
        except BadMessage:
            return False
        return hmac.compare_digest(expected.encode(), proof.encode())

    def seal_mac(self, peer_key: str, body: bytes) -> bytes:
        """Like `seal`, authenticated with the peer's MAC key instead of a signature."""
        mac = hmac.digest(self.mac_key(peer_key), body, "sha256")
        return _MAC_HEAD + base64.b64encode(mac) + _MID + body + _TAIL + b"\n"


def open_line(server_key: str, peer_key: str, line: bytes | str,
              mac_key: bytes | None = None) -> bytes:
    """The message bytes of a stream line that verifies against `server_key` for peer
    `peer_key` (or, given the agent's `mac_key`, carries its MAC); raises BadMessage
    otherwise."""
    raw = line.encode() if isinstance(line, str) else line
    raw = raw.rstrip(b"\r\n")
    if raw.startswith(_MAC_HEAD):
        return _open_mac(raw, mac_key)
    tag, body = _envelope(raw, _HEAD, _SIG_LEN, "not a signed stream line")
    try:
        sig = base64.b64decode(tag, validate=True)
        Ed25519PublicKey.from_public_bytes(key_bytes(server_key)).verify(
            sig, CONTEXT + key_bytes(peer_key) + body)
    except (InvalidSignature, binascii.Error, ValueError):
        raise BadMessage(f"signature does not verify against the pinned server key "
                         f"{fingerprint(server_key)}") from None
    return body


def _envelope(raw: bytes, head: bytes, tag_len: int, refusal: str) -> tuple[bytes, bytes]:
    """(base64 tag, message bytes) of a line laid out as head + tag + _MID + msg + _TAIL."""
    start = len(head) + tag_len + len(_MID)
    if (len(raw) <= start + len(_TAIL) or not raw.startswith(head)
            or raw[len(head) + tag_len:start] != _MID or not raw.endswith(_TAIL)):
        raise BadMessage(refusal)
    return raw[len(head):len(head) + tag_len], raw[start:-len(_TAIL)]


def _open_mac(raw: bytes, mac_key: bytes | None) -> bytes:
    tag, body = _envelope(raw, _MAC_HEAD, _MAC_LEN, "not an authenticated stream line")
    if mac_key is None:
        raise BadMessage("a line with a MAC, but this stream agreed on no MAC key")
    try:
        mac = base64.b64decode(tag, validate=True)
    except (binascii.Error, ValueError):
        raise BadMessage("the line's MAC is not base64") from None
    if not hmac.compare_digest(mac, hmac.digest(mac_key, body, "sha256")):
        raise BadMessage("the line's MAC does not verify with the key agreed with the "
                         "pinned server key")
    return body


# --- signed gateway feed answers -----------------------------------------------------------
#
# A JIT gateway's known-peer feed (/api/v1/gateway/...) is JSON over HTTPS like any answer,
# with the server's signature in a header: over FEED_CONTEXT + the gateway's 32-byte public
# key + the request target (path and query, as sent) + NUL + the exact body. So an answer
# verifies only for the gateway and the question it was made for (an old `changes` answer
# cannot be replayed for a later revision), and only against the key pinned at enrolment.

FEED_CONTEXT = b"wiremesh gateway feed v1\0"
FEED_SIGNATURE_HEADER = "X-Wiremesh-Signature"


def _feed_bytes(peer_key: str, target: bytes, body: bytes) -> bytes:
    return FEED_CONTEXT + key_bytes(peer_key) + target + b"\0" + body


def verify_feed(server_key: str, peer_key: str, target: bytes, body: bytes,
                signature: str | None) -> None:
    """Raises BadMessage unless `signature` is the pinned server key's over this answer."""
    if not signature:
        raise BadMessage("the answer is not signed")
    try:
        Ed25519PublicKey.from_public_bytes(key_bytes(server_key)).verify(
            base64.b64decode(signature, validate=True), _feed_bytes(peer_key, target, body))
    except (InvalidSignature, binascii.Error, ValueError):
        raise BadMessage(f"signature does not verify against the pinned server key "
                         f"{fingerprint(server_key)}") from None
