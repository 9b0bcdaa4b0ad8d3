"""Workers say where they run, and the user can cap and stop them (the fleet on the workers page).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("provider", sa.String, nullable=True))
        batch.add_column(sa.Column("max_runs", sa.Integer, nullable=True))
        batch.add_column(sa.Column("runs_claimed", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("stop_requested_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("exited_at", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        for name in ("exited_at", "stop_requested_at", "runs_claimed", "max_runs", "provider"):
            batch.drop_column(name)
