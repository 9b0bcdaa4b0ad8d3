"""Evaluations name their variant (R1 or R2) and carry one-environment planning
latency and the device it was measured on.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("variant", sa.String, nullable=False, server_default="R1"))
        batch.add_column(sa.Column("latency_ms_1env", sa.Float))
        batch.add_column(sa.Column("device", sa.String))


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("device")
        batch.drop_column("latency_ms_1env")
        batch.drop_column("variant")
