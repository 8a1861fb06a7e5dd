"""Admin tokens get a role (admin, or read-only auditor) and can be revoked.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("admin_tokens") as t:
        t.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="admin"))
        t.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("admin_tokens") as t:
        t.drop_column("revoked_at")
        t.drop_column("role")
