"""Setup keys carry the role of the peers they enrol: `agent` or `gateway`.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("setup_keys") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False,
                                   server_default="agent"))


def downgrade() -> None:
    with op.batch_alter_table("setup_keys") as batch:
        batch.drop_column("role")
