"""A setup key may fix the name of the peer it enrols (one-off keys).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("setup_keys") as t:
        t.add_column(sa.Column("peer_name", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("setup_keys") as t:
        t.drop_column("peer_name")
