"""A run keeps the report of its device check (which execution paths were verified against
the reference, how fast each was, which ones the run uses and what the rest of the run is
projected to cost), so the run page, the export and results.md can show what ran where.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("device_check", sa.JSON, nullable=True))


def downgrade() -> None:
    # SQLite rebuilds the table to drop a column: keep it AUTOINCREMENT (migration 0007)
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("device_check")
