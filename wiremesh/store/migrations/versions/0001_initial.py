"""Initial schema: accounts of the mesh.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "setup_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("key_prefix", sa.String(16), nullable=False),
        sa.Column("reusable", sa.Boolean, nullable=False),
        sa.Column("usage_limit", sa.Integer, nullable=False),
        sa.Column("used_count", sa.Integer, nullable=False),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("auto_groups", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "peers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("public_key", sa.String(44), nullable=False, unique=True),
        sa.Column("overlay_ip", sa.String(45), nullable=False, unique=True),
        sa.Column("endpoints", sa.JSON, nullable=False),
        sa.Column("listen_port", sa.Integer, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("setup_key_id", sa.Integer, sa.ForeignKey("setup_keys.id"), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=True),
    )
    op.create_table(
        "groups",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
    )
    op.create_table(
        "group_members",
        sa.Column("group_id", sa.Integer, sa.ForeignKey("groups.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("peer_id", sa.Integer, sa.ForeignKey("peers.id", ondelete="CASCADE"),
                  primary_key=True, index=True),
    )
    op.create_table(
        "policies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("sources", sa.JSON, nullable=False),
        sa.Column("destinations", sa.JSON, nullable=False),
        sa.Column("destination_routes", sa.JSON, nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("ports", sa.JSON, nullable=False),
        sa.Column("bidirectional", sa.Boolean, nullable=False),
    )
    op.create_table(
        "routes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("prefix", sa.String(64), nullable=False),
        sa.Column("router_group", sa.String(128), nullable=False),
        sa.Column("metric", sa.Integer, nullable=False),
        sa.Column("router_metrics", sa.JSON, nullable=False),
        sa.Column("masquerade", sa.Boolean, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", TS, nullable=False, index=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    for t in ("audit_log", "routes", "policies", "group_members", "groups", "peers",
              "setup_keys", "admin_tokens", "meta"):
        op.drop_table(t)
