"""Database tables. Timestamps are Unix seconds (float): portable across SQLite and
PostgreSQL, comparable in SQL for lease expiry, and ready for JavaScript charts.

Keep in step with migrations/versions: tests compare the two.
"""

from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

def _run_fk() -> Column:
    return Column(Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True)


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_status_created", "status", "created_at", "id"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    task: str
    name: Optional[str] = None
    config: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: str = "queued"
    stage: Optional[str] = None
    step: int = Field(default=0, sa_type=BigInteger)
    total_steps: int = Field(sa_type=BigInteger)
    attempt: int = 0
    worker_id: Optional[str] = None
    lease_expires_at: Optional[float] = None
    created_at: float
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    updated_at: float
    error: Optional[str] = Field(default=None, sa_type=Text)
    is_demo: bool = False
    steps_per_s: Optional[float] = None


class ChecklistItem(SQLModel, table=True):
    __tablename__ = "checklist_items"
    __table_args__ = (UniqueConstraint("run_id", "key", name="uq_checklist_run_key"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(sa_column=_run_fk())
    key: str
    detail: Optional[str] = Field(default=None, sa_type=Text)
    verified_at: float


class MetricPoint(SQLModel, table=True):
    """The primary key is the (run, key, step) uniqueness, so the table is clustered on
    it (WITHOUT ROWID on SQLite): a series is one contiguous range to scan."""

    __tablename__ = "metric_points"
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: int = Field(sa_column=Column(Integer, ForeignKey("runs.id", ondelete="CASCADE"),
                                         primary_key=True))
    key: str = Field(primary_key=True)
    step: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    value: float
    wall_time: float


class MetricBlock(SQLModel, table=True):
    """Lowest and highest point of each `BLOCK`-step slice of a series, kept in step with
    metric_points at ingest, so a chart of a million-point series reads a few thousand
    rows instead of scanning the series (app.services.metrics.chart_series)."""

    __tablename__ = "metric_blocks"
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: int = Field(sa_column=Column(Integer, ForeignKey("runs.id", ondelete="CASCADE"),
                                         primary_key=True))
    key: str = Field(primary_key=True)
    block: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    n: int
    min_step: int = Field(sa_type=BigInteger)
    min_value: float
    min_wall_time: float
    max_step: int = Field(sa_type=BigInteger)
    max_value: float
    max_wall_time: float

class Checkpoint(SQLModel, table=True):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_checkpoint_run_step"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(sa_column=_run_fk())
    step: int = Field(sa_type=BigInteger)
    size: int = Field(sa_type=BigInteger)
    sha256: str
    backup_state: str = "local"
    hub_url: Optional[str] = None
    backed_up_at: Optional[float] = None
    error: Optional[str] = Field(default=None, sa_type=Text)


class Evaluation(SQLModel, table=True):
    __tablename__ = "evaluations"

    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(sa_column=_run_fk())
    step: int = Field(sa_type=BigInteger)
    kind: str
    variant: str = "R1"
    score_mean: float
    score_std: float
    returns: list[float] = Field(sa_column=Column(JSON, nullable=False))
    scores: list[float] = Field(sa_column=Column(JSON, nullable=False))
    n_envs: int
    n_episodes: int
    latency_ms: Optional[float] = None
    latency_ms_1env: Optional[float] = None
    device: Optional[str] = None
    created_at: float


class Event(SQLModel, table=True):
    __tablename__ = "events"

    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: Optional[int] = Field(default=None, sa_column=Column(
        Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=True, index=True))
    ts: float
    level: str
    message: str = Field(sa_type=Text)


class Worker(SQLModel, table=True):
    __tablename__ = "workers"

    id: str = Field(primary_key=True)
    name: str
    host: Optional[str] = None
    device: Optional[str] = None
    gpu_name: Optional[str] = None
    last_seen: float


class Command(SQLModel, table=True):
    __tablename__ = "commands"

    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(sa_column=_run_fk())
    kind: str
    state: str = "queued"
    detail: Optional[str] = Field(default=None, sa_type=Text)
    created_at: float
    updated_at: float


class Change(SQLModel, table=True):
    """Append-only feed behind the server-sent events: its id is the SSE `id:`, so a
    reconnecting browser's Last-Event-ID names exactly what it has already seen."""

    __tablename__ = "changes"

    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: Optional[int] = Field(default=None, sa_column=Column(
        Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=True, index=True))
    kind: str
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    ts: float
