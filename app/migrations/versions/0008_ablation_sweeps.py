"""An ablation sweep varies one config setting over a list of values (the paper's Table 6:
number of levels, points per level); the sweep records which setting and which values, so
the results can be grouped by them and its runs kept out of the main results table.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sweeps", sa.Column("ablation_setting", sa.String, nullable=True))
    op.add_column("sweeps", sa.Column("ablation_values", sa.JSON, nullable=True))


def downgrade() -> None:
    # SQLite rebuilds the table to drop a column: keep it AUTOINCREMENT (migration 0007)
    with op.batch_alter_table("sweeps", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("ablation_values")
        batch.drop_column("ablation_setting")
