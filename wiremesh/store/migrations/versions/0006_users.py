"""Users from the OpenID provider, their login sessions and logins in progress; peers and
setup keys may belong to a user. Posture: peers' agent version and OS family, policies'
requirements.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sub", sa.String(255), nullable=False, unique=True),
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("groups", sa.JSON, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("refresh_token", sa.Text, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_login", TS, nullable=True),
        sa.Column("checked_at", TS, nullable=True),
        sa.Column("disabled_at", TS, nullable=True),
        sa.Column("disabled_reason", sa.Text, nullable=False),
    )
    op.create_table(
        "login_sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_table(
        "login_flows",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("expires_at", TS, nullable=False, index=True),
    )
    # Plain columns (the store deletes a user's peers and keys with the user): SQLite adds
    # them in place, where a foreign key would make alembic rebuild `peers` and its
    # dependants.
    op.add_column("peers", sa.Column("user_id", sa.Integer, nullable=True))
    op.add_column("peers", sa.Column("login_expires_at", TS, nullable=True))
    op.create_index("ix_peers_user_id", "peers", ["user_id"])
    op.add_column("setup_keys", sa.Column("user_id", sa.Integer, nullable=True))
    op.add_column("peers", sa.Column("agent_version", sa.String(32), nullable=False,
                                     server_default=""))
    op.add_column("peers", sa.Column("os_family", sa.String(16), nullable=False,
                                     server_default=""))
    op.add_column("policies", sa.Column("posture", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_index("ix_peers_user_id", "peers")
    with op.batch_alter_table("policies") as t:
        t.drop_column("posture")
    with op.batch_alter_table("peers") as t:
        t.drop_column("os_family")
        t.drop_column("agent_version")
        t.drop_column("login_expires_at")
        t.drop_column("user_id")
    with op.batch_alter_table("setup_keys") as t:
        t.drop_column("user_id")
    for name in ("login_flows", "login_sessions", "users"):
        op.drop_table(name)
