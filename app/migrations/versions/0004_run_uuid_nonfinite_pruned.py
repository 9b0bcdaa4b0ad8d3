"""Runs get a UUID (worker state is keyed by it, run ids restart on a fresh database);
non-finite metric values get their own table; checkpoints record that the worker pruned
them from disk; one evaluation per (run, step, kind, variant).

No batch (copy-and-rename) operation on `runs` or `checkpoints`: on SQLite with foreign
keys on, dropping the old `runs` table would cascade-delete every run's children. Plain
ADD COLUMN (with a default for NOT NULL) and index statements work on both databases.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    op.add_column("runs", sa.Column("uuid", sa.String(32), nullable=False, server_default=""))
    for (run_id,) in conn.execute(sa.text("SELECT id FROM runs")).all():
        conn.execute(sa.text("UPDATE runs SET uuid = :u WHERE id = :id"), {"u": uuid.uuid4().hex, "id": run_id})
    op.create_index("ix_runs_uuid", "runs", ["uuid"], unique=True)

    op.create_table(
        "metric_nonfinite",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("step", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("value", sa.String, nullable=False),
        sa.Column("wall_time", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )

    op.add_column("checkpoints", sa.Column("pruned", sa.Boolean, nullable=False, server_default=sa.false()))

    # Quick evaluations were inserted again when a worker re-sent them; keep the newest.
    conn.execute(
        sa.text(
            "DELETE FROM evaluations WHERE id NOT IN (SELECT MAX(id) FROM evaluations "
            "GROUP BY run_id, step, kind, variant)"
        )
    )
    with op.batch_alter_table("evaluations") as batch:
        batch.create_unique_constraint("uq_evaluation_run_step_kind_variant", ["run_id", "step", "kind", "variant"])


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_constraint("uq_evaluation_run_step_kind_variant", type_="unique")
    op.execute("ALTER TABLE checkpoints DROP COLUMN pruned")
    op.drop_table("metric_nonfinite")
    op.drop_index("ix_runs_uuid", "runs")
    op.execute("ALTER TABLE runs DROP COLUMN uuid")
