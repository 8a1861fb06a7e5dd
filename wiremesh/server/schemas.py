"""Request and response bodies of the HTTP API (pydantic v2 validates every field)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from wiremesh.core.posture import OsFamily
from wiremesh.core.wire import NAME_PATTERN as NAME_RE
from wiremesh.core.wire import Endpoint, Name, PeerEndpoint, PeerName, WgKey, endpoint_problem
from wiremesh.store.common import MAX_ID

# A name or a numeric id in a URL path; anything else is refused before it reaches the store.
NamePath = Annotated[str, Path(pattern=NAME_RE, description="letters, digits, '.', '_', '-'")]
PeerRef = Annotated[str, Field(pattern=NAME_RE, description="peer name or id")]
PeerRefPath = Annotated[str, Path(pattern=NAME_RE, description="peer name or id")]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
MAX_EXPIRY_S = 10 * 365 * 86400
# The last second a datetime holds (9999-12-31T23:59:59Z): reports are shown as datetimes.
MAX_TIMESTAMP = 253402300799


def in_range(lo: int, hi: int, unit: str) -> AfterValidator:
    """An int check whose error names the whole allowed range, not just one bound."""

    def check(v: int) -> int:
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi} {unit}")
        return v

    return AfterValidator(check)


UsageLimit = Annotated[int, in_range(0, MAX_ID, "enrolments"),
                       WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_ID})]
ExpirySeconds = Annotated[int, in_range(1, MAX_EXPIRY_S, "seconds (10 years)"),
                          WithJsonSchema({"type": "integer", "minimum": 1,
                                          "maximum": MAX_EXPIRY_S})]


class Strict(BaseModel):
    # strict: JSON `false` is not the integer 0, nor "1" the integer 1, as the schema says.
    # No NaN or Infinity either: JSON has neither, though Python's decoder takes them.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class EnrollRequest(Strict):
    setup_key: str = Field(min_length=1, max_length=200)
    public_key: WgKey
    hostname: PeerName
    listen_port: int = Field(51820, ge=1, le=65535)
    endpoints: list[PeerEndpoint] = Field(default_factory=list, max_length=16)
    proof: str | None = Field(
        None, max_length=64,
        description="base64 HMAC proving the private key of `public_key` (core/wire.py "
                    "`enroll_proof`); without it, a retry of an enrolment that went through "
                    "is refused")


class ServerKeyOut(BaseModel):
    """The key the server signs netmap streams with (Ed25519, base64) and its fingerprint."""

    public_key: str
    fingerprint: str
    stream_key: str = Field(description="X25519 key (base64) an agent agrees a MAC key with, "
                                        "for netmap streams opened with `mac=1`")
    stream_key_sig: str = Field(description="the signing key's signature over the stream key")


class EnrollResponse(BaseModel):
    peer_id: int
    name: str
    overlay_ip: str
    overlay_prefix_len: int
    token: str
    note: str | None = Field(None, description="why `name` is not the hostname asked for")
    server_key: ServerKeyOut


class Candidate(Strict):
    """An address a peer may be reached at, and how the agent learnt it. Found by the agent
    (any address of its interfaces: a VPN's in 100.64.0.0/10 too), so one no peer can be sent
    to is left out (`EndpointReport.ordered`) rather than refusing the report."""

    endpoint: Endpoint
    kind: Literal["local", "mapped"] = Field(
        description="local: an interface address; mapped: the NAT mapping of the WireGuard "
                    "socket, measured with STUN")

class EndpointReport(Strict):
    listen_port: int = Field(ge=1, le=65535)
    endpoints: list[PeerEndpoint] = Field(default_factory=list, max_length=16,
                                          description="fixed endpoints the operator "
                                                      "configured")
    candidates: list[Candidate] = Field(default_factory=list, max_length=16)
    # Posture (core/posture.py); older agents send neither.
    agent_version: str | None = Field(None, pattern=r"^[0-9A-Za-z.+-]{1,32}$")
    os_family: OsFamily | None = None

    def ordered(self) -> list[str]:
        """Everything reported, best first: configured, mapped (works across NATs that
        keep the mapping), then local addresses (peers on the same LAN); no duplicates,
        no candidate other peers cannot be sent to."""
        rank = {"mapped": 0, "local": 1}
        picked = [*self.endpoints,
                  *(c.endpoint for c in sorted(self.candidates, key=lambda c: rank[c.kind])
                    if endpoint_problem(c.endpoint) is None)]
        return list(dict.fromkeys(picked))


class EndpointAnswer(BaseModel):
    observed: str | None = Field(description="the address this report came from")
    stun_port: int | None = Field(description="UDP port of the server's STUN responder "
                                              "(same host as the API), if it runs one")


class SetupKeyCreate(Strict):
    name: Name
    reusable: bool = False
    usage_limit: UsageLimit = Field(0, description="0 = unlimited (reusable keys only)")
    expires_in_s: ExpirySeconds | None = Field(
        None, description="seconds until expiry, at most 10 years; none = never")
    auto_groups: list[Name] = Field(default_factory=list)
    peer_name: PeerName | None = Field(
        None, description="the name its peer gets (one-off keys); no other peer may take it")
    role: Literal["agent", "gateway"] = Field(
        "agent", description="gateway: its peers are JIT gateways and follow the known-peer "
                             "feed (/api/v1/gateway/...) instead of a netmap")


class SetupKeyOut(BaseModel):
    id: int
    name: str
    prefix: str
    reusable: bool
    usage_limit: int
    used_count: int
    expires_at: datetime | None
    revoked: bool
    valid: bool
    auto_groups: list[str]
    peer_name: str | None = None
    role: str = "agent"
    key: str | None = None  # only in the answer to create, never again
    server_fingerprint: str | None = Field(
        None, description="in the answer to create: the server key agents pin "
                          "(wiremesh up --server-fingerprint)")


class PathReport(Strict):
    """How this agent's WireGuard reaches one of its peers right now."""

    peer: WgKey
    path: Literal["direct", "relayed", "probing"]
    endpoint: Endpoint | None = Field(None, description="the WireGuard endpoint in use")
    last_handshake: float | None = Field(None, ge=0, le=MAX_TIMESTAMP,
                                         description="unix seconds; none = never")


class PathsReport(Strict):
    peers: list[PathReport] = Field(default_factory=list, max_length=100_000)


class PeerPathOut(BaseModel):
    peer: str = Field(description="the other peer's name")
    path: str
    endpoint: str | None
    last_handshake: datetime | None


class PeerOut(BaseModel):
    id: int
    name: str
    public_key: str
    overlay_ip: str
    endpoints: list[str]
    listen_port: int
    groups: list[str]
    created_at: datetime
    last_seen: datetime | None
    connected: bool
    paths: list[PeerPathOut] = Field(
        default_factory=list, description="as this peer's agent last reported them to this "
                                          "server replica: per peer, direct or relayed")
    user_id: int | None = Field(None, description="its owner, for a peer enrolled by a "
                                                  "user's login (wiremesh up --login)")
    login_expires_at: datetime | None = Field(
        None, description="when its user must log in on it again to stay in the mesh")
    agent_version: str = Field("", description="as its agent reports it ('' = not yet)")
    os_family: str = Field("", description="as its agent reports it ('' = not yet)")


class PeerRename(Strict):
    name: PeerName


class GroupCreate(Strict):
    name: Name
    members: list[PeerRef] = Field(default_factory=list)


class GroupOut(BaseModel):
    name: str
    members: list[str]
    builtin: bool = False


class MembershipOut(GroupOut):
    changed: bool = Field(description="false: the peer was already in (or not in) the group")


class MemberRef(Strict):
    peer: PeerRef
