"""A run keeps the newest lines of its worker's log, its console on the run page.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_lines",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("uid", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("level", sa.String, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.UniqueConstraint("run_id", "uid", name="uq_console_run_uid"),
    )
    op.create_index("ix_console_lines_run_id_id", "console_lines", ["run_id", "id"])


def downgrade() -> None:
    op.drop_table("console_lines")
