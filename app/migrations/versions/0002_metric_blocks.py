"""Per-block extremes of every metric series (fast charts of long runs), backfilled.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BLOCK = 256  # app.services.metrics.BLOCK at the time of this revision


def upgrade() -> None:
    op.create_table(
        "metric_blocks",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("block", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("min_step", sa.BigInteger, nullable=False),
        sa.Column("min_value", sa.Float, nullable=False),
        sa.Column("min_wall_time", sa.Float, nullable=False),
        sa.Column("max_step", sa.BigInteger, nullable=False),
        sa.Column("max_value", sa.Float, nullable=False),
        sa.Column("max_wall_time", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )
    # Backfill databases that already hold metrics; one streaming pass in key order.
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT run_id, key, step, value, wall_time FROM metric_points ORDER BY run_id, key, step")
    ).yield_per(10_000)
    blocks: dict = {}
    for run_id, key, step, value, wall_time in rows:
        b = blocks.get((run_id, key, step // BLOCK))
        if b is None:
            blocks[(run_id, key, step // BLOCK)] = [1, step, value, wall_time, step, value, wall_time]
            continue
        b[0] += 1
        if value < b[2]:
            b[1:4] = step, value, wall_time
        if value > b[5]:
            b[4:7] = step, value, wall_time
    if blocks:
        columns = (
            "run_id",
            "key",
            "block",
            "n",
            "min_step",
            "min_value",
            "min_wall_time",
            "max_step",
            "max_value",
            "max_wall_time",
        )
        op.bulk_insert(
            sa.table("metric_blocks", *(sa.column(c) for c in columns)),
            [dict(zip(columns, (*k, *v))) for k, v in blocks.items()],
        )


def downgrade() -> None:
    op.drop_table("metric_blocks")
