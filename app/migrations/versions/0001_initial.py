"""Initial schema: runs and everything a run owns, workers, commands, the change feed.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _run_fk(nullable: bool = False) -> sa.Column:
    return sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task", sa.String, nullable=False),
        sa.Column("name", sa.String),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("stage", sa.String),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("total_steps", sa.BigInteger, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.String),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("is_demo", sa.Boolean, nullable=False),
        sa.Column("steps_per_s", sa.Float),
    )
    op.create_index("ix_runs_status_created", "runs", ["status", "created_at", "id"])
    op.create_table(
        "checklist_items",
        sa.Column("id", sa.Integer, primary_key=True),
        _run_fk(),
        sa.Column("key", sa.String, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("verified_at", sa.Float, nullable=False),
        sa.UniqueConstraint("run_id", "key", name="uq_checklist_run_key"),
    )
    op.create_index("ix_checklist_items_run_id", "checklist_items", ["run_id"])
    op.create_table(
        "metric_points",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("step", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("wall_time", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer, primary_key=True),
        _run_fk(),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String, nullable=False),
        sa.Column("backup_state", sa.String, nullable=False),
        sa.Column("hub_url", sa.String),
        sa.Column("backed_up_at", sa.Float),
        sa.Column("error", sa.Text),
        sa.UniqueConstraint("run_id", "step", name="uq_checkpoint_run_step"),
    )
    op.create_index("ix_checkpoints_run_id", "checkpoints", ["run_id"])
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer, primary_key=True),
        _run_fk(),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("score_mean", sa.Float, nullable=False),
        sa.Column("score_std", sa.Float, nullable=False),
        sa.Column("returns", sa.JSON, nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("n_envs", sa.Integer, nullable=False),
        sa.Column("n_episodes", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_evaluations_run_id", "evaluations", ["run_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        _run_fk(nullable=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("level", sa.String, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_index("ix_events_run_id", "events", ["run_id"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("host", sa.String),
        sa.Column("device", sa.String),
        sa.Column("gpu_name", sa.String),
        sa.Column("last_seen", sa.Float, nullable=False),
    )
    op.create_table(
        "commands",
        sa.Column("id", sa.Integer, primary_key=True),
        _run_fk(),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_commands_run_id", "commands", ["run_id"])
    op.create_table(
        "changes",
        sa.Column("id", sa.Integer, primary_key=True),
        _run_fk(nullable=True),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
    )
    op.create_index("ix_changes_run_id", "changes", ["run_id"])


def downgrade() -> None:
    for table in (
        "changes",
        "commands",
        "workers",
        "events",
        "evaluations",
        "checkpoints",
        "metric_points",
        "checklist_items",
        "runs",
    ):
        op.drop_table(table)
