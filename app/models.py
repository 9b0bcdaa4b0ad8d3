"""Database tables. Timestamps are Unix seconds (float): portable across SQLite and
PostgreSQL, comparable in SQL for lease expiry, and ready for JavaScript charts.

Keep in step with migrations/versions: tests compare the two.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def _run_fk() -> Column:
    return Column(Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True)


class _Stored(Protocol):
    id: int | None


def stored_id(row: _Stored) -> int:
    """The id of a row read from the database (or flushed): SQLModel types ids Optional
    only because they are None until a new row's first flush."""
    assert row.id is not None, f"{type(row).__name__} has no id before its first flush"
    return row.id


class Sweep(SQLModel, table=True):
    """A named group of ordinary runs: tasks × seeds × variants with one set of config
    overrides. The runs carry `sweep_id`; the sweep keeps what was asked for."""

    __tablename__ = "sweeps"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never handed out again (migration 0007)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    tasks: list[str] = Field(sa_column=Column(JSON, nullable=False))
    seeds: list[int] = Field(sa_column=Column(JSON, nullable=False))
    variants: list[str] = Field(sa_column=Column(JSON, nullable=False))
    config: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: float
    cancelled_at: float | None = None
    ablation_setting: str | None = None
    """The one config key an ablation sweep varies, its runs taking each of `ablation_values`;
    None for a plain sweep (migration 0008)."""
    ablation_values: list[Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_status_created", "status", "created_at", "id"),
        {"sqlite_autoincrement": True},
    )  # a deleted run's id is never reissued (migration 0007)

    id: int | None = Field(default=None, primary_key=True)
    uuid: str = Field(default_factory=lambda: uuid.uuid4().hex, max_length=32, unique=True, index=True)
    """Unique across servers: run ids start at 1 again on a fresh database, so worker state is keyed by this."""
    task: str
    name: str | None = None
    config: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: str = "queued"
    stage: str | None = None
    step: int = Field(default=0, sa_type=BigInteger)
    total_steps: int = Field(sa_type=BigInteger)
    attempt: int = 0
    worker_id: str | None = None
    lease_expires_at: float | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float
    error: str | None = Field(default=None, sa_type=Text)
    is_demo: bool = False
    steps_per_s: float | None = None
    sweep_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("sweeps.id", ondelete="SET NULL"), nullable=True, index=True)
    )
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    note: str | None = Field(default=None, sa_type=Text)
    archived: bool = False
    """Hidden from the runs list unless asked for; still counted in results."""
    device_check: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    """The latest attempt's device check report (app.protocol.DeviceCheckRequest without its
    attempt); None until a worker has checked its device for the run (migration 0009)."""


class ChecklistItem(SQLModel, table=True):
    __tablename__ = "checklist_items"
    __table_args__ = (UniqueConstraint("run_id", "key", name="uq_checklist_run_key"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(sa_column=_run_fk())
    key: str
    detail: str | None = Field(default=None, sa_type=Text)
    verified_at: float
    failed: bool = False
    """The check ran and failed (✗); `detail` says what failed and what to do next."""
    attempt: int | None = None
    """The attempt that verified it, so a resumed attempt can say which one passed the smoke
    test; None for items verified before migration 0007."""


class MetricPoint(SQLModel, table=True):
    """The primary key is the (run, key, step) uniqueness, so the table is clustered on
    it (WITHOUT ROWID on SQLite): a series is one contiguous range to scan."""

    __tablename__ = "metric_points"
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: int = Field(sa_column=Column(Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True))
    key: str = Field(primary_key=True)
    step: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    value: float
    wall_time: float


class MetricNonFinite(SQLModel, table=True):
    """Points whose value was NaN or infinite ('nan', 'inf', '-inf'): JSON cannot carry them
    and min/max charts must not see them, yet a diverging run has to show where it diverged.
    A (run, key, step) is in this table or in metric_points, never both."""

    __tablename__ = "metric_nonfinite"
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: int = Field(sa_column=Column(Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True))
    key: str = Field(primary_key=True)
    step: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    value: str
    wall_time: float


class MetricBlock(SQLModel, table=True):
    """Lowest and highest point of each `BLOCK`-step slice of a series, kept in step with
    metric_points at ingest, so a chart of a million-point series reads a few thousand
    rows instead of scanning the series (app.services.metrics.chart_series)."""

    __tablename__ = "metric_blocks"
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: int = Field(sa_column=Column(Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True))
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

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(sa_column=_run_fk())
    step: int = Field(sa_type=BigInteger)
    size: int = Field(sa_type=BigInteger)
    sha256: str
    backup_state: str = "local"
    hub_url: str | None = None
    local_url: str | None = None
    """Where the worker saved it (file://), so a server on the same machine can serve it (0011)."""
    backed_up_at: float | None = None
    error: str | None = Field(default=None, sa_type=Text)
    pruned: bool = False
    """The worker deleted its local copy (keep_local); a Hub copy, if any, remains."""


class Evaluation(SQLModel, table=True):
    __tablename__ = "evaluations"
    __table_args__ = (
        UniqueConstraint("run_id", "step", "kind", "variant", name="uq_evaluation_run_step_kind_variant"),
    )

    id: int | None = Field(default=None, primary_key=True)
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
    latency_ms: float | None = None
    latency_ms_1env: float | None = None
    device: str | None = None
    created_at: float


class Artifact(SQLModel, table=True):
    """A file an evaluation left besides its scores (an episode's video, its plans JSON),
    stored under <data_dir>/artifacts/<run_id>/<name>; the row is what the API lists, the
    file what it serves (app/services/artifacts.py, migration 0012)."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_artifact_run_name"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(sa_column=_run_fk())
    name: str
    kind: str
    """'video' or 'plans'."""
    variant: str
    eval_kind: str
    """The evaluation it came from: 'final' or 'quick'."""
    step: int = Field(sa_type=BigInteger)
    """The checkpoint step the evaluation was of."""
    size: int = Field(sa_type=BigInteger)
    sha256: str
    created_at: float


class Event(SQLModel, table=True):
    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=True, index=True)
    )
    ts: float
    level: str
    message: str = Field(sa_type=Text)


class ConsoleLine(SQLModel, table=True):
    """One entry of a run's console: a line of its worker's log, or a traceback folded into
    one. Only the newest are kept (app/services/console.py); `uid`, chosen by the worker,
    makes a replayed write a no-op."""

    __tablename__ = "console_lines"
    __table_args__ = (
        UniqueConstraint("run_id", "uid", name="uq_console_run_uid"),
        Index("ix_console_lines_run_id_id", "run_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(sa_column=Column(Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False))
    uid: str = Field(max_length=32)
    attempt: int
    ts: float
    level: str
    text: str = Field(sa_type=Text)


class Worker(SQLModel, table=True):
    __tablename__ = "workers"

    id: str = Field(primary_key=True)
    name: str
    host: str | None = None
    device: str | None = None
    gpu_name: str | None = None
    last_seen: float
    provider: str | None = None
    """Where it runs when the worker can tell: colab, or a SkyPilot cloud and region."""
    max_runs: int | None = None
    """The user's cap on the runs it claims (None: no cap); at the cap it is told to exit."""
    runs_claimed: int = 0
    stop_requested_at: float | None = None
    """The user asked it to stop: its current run stops at a checkpoint, and it exits."""
    exited_at: float | None = None


class Command(SQLModel, table=True):
    __tablename__ = "commands"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(sa_column=_run_fk())
    kind: str
    state: str = "queued"
    detail: str | None = Field(default=None, sa_type=Text)
    created_at: float
    updated_at: float


class Change(SQLModel, table=True):
    """Append-only feed behind the server-sent events: its id is the SSE `id:`, so a
    reconnecting browser's Last-Event-ID names exactly what it has already seen."""

    __tablename__ = "changes"
    __table_args__ = {"sqlite_autoincrement": True}  # ids only grow, even when a run's changes are deleted

    id: int | None = Field(default=None, primary_key=True)
    run_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=True, index=True)
    )
    kind: str
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    ts: float


class BrowserSession(SQLModel, table=True):
    """A logged-in browser. Its cookie holds a random secret of which only the sha256 is
    stored (a copy of the database gives no usable cookie); deleting the row logs that
    browser out. `token_id` names the server token it was opened with, so a new token
    ends every older session."""

    __tablename__ = "browser_sessions"

    id: str = Field(primary_key=True, max_length=64)
    token_id: str = Field(max_length=64)
    created_at: float
    expires_at: float
