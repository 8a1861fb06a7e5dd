"""The introspection contract between the server and a standalone relay (pydantic models).

A standalone relay never believes a peer about itself: it hands the peer's bearer token to the
server (authenticating with its own relay credential, as an OAuth resource server introspects a
token, RFC 7662) and learns who the peer is and whom it may reach. With `since` set to the
version it holds, the server answers when that changes (or after `wait` seconds), so a policy
change or a deleted peer reaches the relay as fast as it reaches agents.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

PATH = "/api/v1/relay/introspect"
MAX_WAIT_S = 30.0
MAX_TOKEN_LEN = 512  # longer than any token the server issues


class IntrospectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # `false` is not 0 seconds
    token: str = Field(min_length=1, max_length=MAX_TOKEN_LEN,
                       description="the peer's bearer token")
    since: int = Field(0, ge=0, description="netmap version the relay holds (0 = none)")
    wait: float = Field(0.0, ge=0.0, le=MAX_WAIT_S,
                        description="seconds to wait for a version other than `since`")


class IntrospectResponse(BaseModel):
    active: bool
    name: str = ""
    public_key: str = ""
    version: int = 0
    allowed: list[str] = Field(default_factory=list,
                               description="public keys in the peer's netmap")
