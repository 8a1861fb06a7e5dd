"""SQLAlchemy 2 tables. The schema itself is owned by alembic migrations (store/migrations)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Counters: `revision` (bumped by every change that can alter a netmap), `ipam_next`."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False)


class AdminToken(Base):
    __tablename__ = "admin_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    role: Mapped[str] = mapped_column(String(16), default="admin")  # admin | auditor
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SetupKey(Base):
    __tablename__ = "setup_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    reusable: Mapped[bool] = mapped_column(default=False)
    usage_limit: Mapped[int] = mapped_column(Integer, default=0)  # 0 = unlimited
    used_count: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked: Mapped[bool] = mapped_column(default=False)
    auto_groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The name its (one) peer gets; reserved from other peers while the key can be used.
    peer_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # A key minted for a device login: its peer belongs to this user.
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # What its peers are: `agent`, or `gateway` (a JIT gateway: follows the known-peer feed,
    # store/gateways.py, instead of a netmap).
    role: Mapped[str] = mapped_column(String(16), default="agent", server_default="agent")


class Peer(Base):
    __tablename__ = "peers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    public_key: Mapped[str] = mapped_column(String(44), unique=True)
    overlay_ip: Mapped[str] = mapped_column(String(45), unique=True)
    endpoints: Mapped[list[str]] = mapped_column(JSON, default=list)
    listen_port: Mapped[int] = mapped_column(Integer, default=51820)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    setup_key_id: Mapped[int | None] = mapped_column(ForeignKey("setup_keys.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # A user's peer (enrolled by `wiremesh up --login`); None for peers of setup keys.
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    # After this the peer is out of the mesh until its user logs in again on it.
    login_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)
    # As its agent reports them (posture checks); "" until it does.
    agent_version: Mapped[str] = mapped_column(String(32), default="")
    os_family: Mapped[str] = mapped_column(String(16), default="")


class User(Base):
    """A person known from the OpenID provider (`sub` is the provider's stable id)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sub: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str] = mapped_column(String(255), default="")
    name: Mapped[str] = mapped_column(String(255), default="")
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)  # the provider's claim
    role: Mapped[str] = mapped_column(String(16), default="user")  # admin | auditor | user
    # The provider's refresh token: the server re-checks the user with it on a schedule.
    refresh_token: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_login: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Set when the provider no longer knows the user: their peers leave every netmap.
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                         nullable=True)
    disabled_reason: Mapped[str] = mapped_column(Text, default="")


class LoginSession(Base):
    """A browser's login (the cookie holds the secret, the row its hash)."""

    __tablename__ = "login_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LoginFlow(Base):
    """A login in progress at the provider (browser redirect or device grant): what the
    server must remember between starting it and its answer, keyed by the hash of the
    secret the browser (state) or the agent (flow secret) holds."""

    __tablename__ = "login_flows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # web | device
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Group(Base):
    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)


class GroupMember(Base):
    __tablename__ = "group_members"
    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    peer_id: Mapped[int] = mapped_column(
        ForeignKey("peers.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class PolicyRow(Base):
    __tablename__ = "policies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(default=True)
    sources: Mapped[list[str]] = mapped_column(JSON, default=list)
    destinations: Mapped[list[str]] = mapped_column(JSON, default=list)
    destination_routes: Mapped[list[str]] = mapped_column(JSON, default=list)
    protocol: Mapped[str] = mapped_column(String(8), default="all")
    ports: Mapped[list[str]] = mapped_column(JSON, default=list)
    bidirectional: Mapped[bool] = mapped_column(default=False)
    # {"min_agent_version": str | None, "os": [family, ...]} or None (core/posture.py)
    posture: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class RouteRow(Base):
    __tablename__ = "routes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    prefix: Mapped[str] = mapped_column(String(64))
    router_group: Mapped[str] = mapped_column(String(128))
    metric: Mapped[int] = mapped_column(Integer, default=100)
    router_metrics: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    masquerade: Mapped[bool] = mapped_column(default=True)
    enabled: Mapped[bool] = mapped_column(default=True)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ServerKey(Base):
    """The server's netmap signing key: one row, shared by every replica of the database."""

    __tablename__ = "server_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    private_key: Mapped[str] = mapped_column(String(64))  # base64 of the raw 32 bytes
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ChangeRow(Base):
    """What a revision changed (written in the change's transaction; store/changes.py):
    kind `peer` (ref: id; its row or its groups), `group` (ref: name; its existence or
    members), `policies` or `routes` (ref: the name of one added, edited or deleted; empty,
    as earlier versions logged it: any of them)."""

    __tablename__ = "change_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    ref: Mapped[str] = mapped_column(String(128))
