"""Runs as the user sees them: create, detail, cancel, retry, backup, export (every metric
point as JSON, or the metric history as CSV rows), the labels a user puts on a run (tags, a
note, archived), and deletion: a run's rows and the files this machine holds for it go, its
Hub or backup-folder copies are the user's and stay. The runs list's filters and sort are
app.services.run_list.

A run's config is resolved once by `dlite.config.from_dict` and stored in full, so
the worker and the pages read the same values and app/ declares no defaults.
"""

from __future__ import annotations

import heapq
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from app.db import Database
from app.models import (
    ChecklistItem,
    Checkpoint,
    Command,
    Evaluation,
    Event,
    MetricNonFinite,
    MetricPoint,
    Run,
    stored_id,
)
from app.protocol import MAX_INT, checklist_keys, checklist_label
from app.services import Conflict, NotFound, artifacts
from app.services.artifacts import artifact_out, list_artifacts
from app.services.checkpoint_files import download_where
from app.services.events import event_dict, latest_change_id, log_event, now, record_change
from app.services.metrics import latest_points, metric_keys
from dlite.config import from_dict
from dlite.tasks import TASKS

RETRYABLE = ("failed", "cancelled", "interrupted")
PENDING_COMMAND_STATES = ("queued", "sent", "uploading")
MAX_TAGS, MAX_TAG_LENGTH = 20, 40


def run_summary(run: Run) -> dict[str, Any]:
    """The fields a run list or a `run` stream message shows (no config, no children)."""
    return {
        "id": run.id,
        "uuid": run.uuid,
        "task": run.task,
        "name": run.name,
        "status": run.status,
        "stage": run.stage,
        "step": run.step,
        "total_steps": run.total_steps,
        "attempt": run.attempt,
        "worker_id": run.worker_id,
        "lease_expires_at": run.lease_expires_at,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "updated_at": run.updated_at,
        "error": run.error,
        "is_demo": run.is_demo,
        "steps_per_s": run.steps_per_s,
        "sweep_id": run.sweep_id,
        "tags": run.tags,
        "note": run.note,
        "archived": run.archived,
    }


def touch(session: Session, run: Run) -> None:
    """Stamp a changed run and tell the streams about it."""
    run.updated_at = now()
    session.add(run)
    session.flush()
    record_change(session, run.id, "run", run_summary(run))


def create_run(session: Session, task: str, name: str | None, overrides: dict[str, Any], is_demo: bool = False) -> Run:
    """Raises dlite.config.ConfigError naming the bad field."""
    cfg = from_dict({**overrides, "task": task})
    t = now()
    run = Run(
        task=cfg.task,
        name=name,
        config=cfg.to_dict(),
        total_steps=cfg.run_steps,
        created_at=t,
        updated_at=t,
        is_demo=is_demo,
    )
    session.add(run)
    session.flush()
    touch(session, run)
    log_event(session, run.id, "info", "run queued")
    return run


def run_label(run: Run) -> str:
    """How tables and figure titles name a run: its task, and its name when it has one."""
    return run.task if not run.name else f"{run.task} ({run.name})"


def get_run(session: Session, run_id: int) -> Run:
    """Ids the database cannot hold (a page address like /runs/99999999999999999999) are
    simply not there, rather than an overflow inside the driver."""
    run = session.get(Run, run_id) if 0 < run_id <= MAX_INT else None
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


BACKUP_TARGET_FIELDS = ("hub_repo", "backup_dir")
NO_BACKUP_TARGET = "no backup target: set hub_repo (or backup_dir) when creating the run (Clone and edit)"


def backup_target(config: dict[str, Any]) -> str | None:
    """Where the run's backups go (a Hub repo or a directory), or None when nowhere."""
    return next((config[f] for f in BACKUP_TARGET_FIELDS if config.get(f)), None)


def checklist_items(session: Session, run_id: int) -> list[ChecklistItem]:
    """The items a run's attempts have verified (✓ or ✗) so far."""
    return list(session.exec(select(ChecklistItem).where(ChecklistItem.run_id == run_id)))


def checklist(session: Session, run: Run) -> list[dict[str, Any]]:
    """All checklist keys in order, verified or not, with labels from the run's config.
    `skipped` says why an item will never be ticked (a backup with no backup target, a
    video with record_video off)."""
    done = {i.key: i for i in checklist_items(session, stored_id(run))}
    never = {
        "smoke.backup": None if backup_target(run.config) else "no backup target",
        "eval.video": "record_video is off" if run.config.get("record_video") == "off" else None,
    }
    return [
        {
            "key": key,
            "label": checklist_label(key, run.config),
            "detail": done[key].detail if key in done else None,
            "verified_at": done[key].verified_at if key in done else None,
            "failed": key in done and done[key].failed,
            "skipped": None if key in done else never.get(key),
        }
        for key in checklist_keys(run.config)
    ]


def checkpoint_dict(c: Checkpoint) -> dict[str, Any]:
    return c.model_dump(exclude={"run_id"})


def evaluation_dict(e: Evaluation) -> dict[str, Any]:
    return e.model_dump(exclude={"run_id"})


def command_dict(c: Command) -> dict[str, Any]:
    return c.model_dump()


def checkpoints(session: Session, run_id: int) -> list[Checkpoint]:
    return list(session.exec(select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(col(Checkpoint.step))))


def evaluations(session: Session, run_id: int) -> list[Evaluation]:
    return list(session.exec(select(Evaluation).where(Evaluation.run_id == run_id).order_by(col(Evaluation.id))))


def paper_numbers(task: str) -> dict[str, Any]:
    """Published scores of the task, from dlite.tasks (the single table of them)."""
    t = TASKS[task]
    score = lambda s: None if s is None else {"mean": s.mean, "sem": s.sem, "source": s.source}  # noqa: E731
    return {
        "diffuser_lite_d": t.paper_d,
        "r1": score(t.paper_r1),
        "r2": score(t.paper_r2),
        "seed_readme_r1": score(t.seed_readme_r1),
    }


def run_detail(session: Session, run: Run, root: str = "") -> dict[str, Any]:
    """`root`: the path prefix artifacts' URLs start with (app.urls)."""
    assert run.id is not None  # a stored run
    return {
        **run_summary(run),
        "config": run.config,
        "checklist": checklist(session, run),
        "checkpoints": [{**checkpoint_dict(c), "download": download_where(c)} for c in checkpoints(session, run.id)],
        "evaluations": [evaluation_dict(e) for e in evaluations(session, run.id)],
        "artifacts": [artifact_out(a, root).model_dump() for a in list_artifacts(session, run.id)],
        "commands": [
            command_dict(c)
            for c in session.exec(select(Command).where(Command.run_id == run.id).order_by(col(Command.id)))
        ],
        "metrics": latest_points(session, run.id),
        "device_check": run.device_check,
        "paper": paper_numbers(run.task),
        "change_id": latest_change_id(session),
    }


def pending_commands(session: Session, run_id: int, kind: str | None = None) -> list[Command]:
    """Commands of a run not yet done or failed, oldest first."""
    query = select(Command).where(Command.run_id == run_id, col(Command.state).in_(PENDING_COMMAND_STATES))
    if kind is not None:
        query = query.where(Command.kind == kind)
    return list(session.exec(query.order_by(col(Command.id))))


def queue_command(session: Session, run: Run, kind: str) -> Command:
    """Commands reach the worker in its next heartbeat; a pending one is not duplicated."""
    if run.status != "running":
        raise Conflict(f"run {run.id} is {run.status}; only a running run takes a {kind} command")
    if kind == "backup" and backup_target(run.config) is None:
        raise Conflict(f"run {run.id} has {NO_BACKUP_TARGET}")
    pending = pending_commands(session, stored_id(run), kind)
    command = pending[0] if pending else None
    if command is None:
        t = now()
        command = Command(run_id=run.id, kind=kind, created_at=t, updated_at=t)
        session.add(command)
        session.flush()
        log_event(session, run.id, "info", f"{kind} requested")
    return command


def cancel_run(session: Session, run: Run) -> dict[str, Any]:
    """A queued run is cancelled at once; a running one is asked through its worker."""
    if run.status == "queued":
        run.status, run.finished_at = "cancelled", now()
        touch(session, run)
        log_event(session, run.id, "info", "cancelled before it started")
        return {"status": run.status, "command": None}
    command = queue_command(session, run, "cancel")
    return {"status": run.status, "command": command_dict(command)}


def retry_run(session: Session, run: Run) -> Run:
    """Queue an ended run again; the next attempt resumes from its newest checkpoint."""
    if run.status not in RETRYABLE:
        raise Conflict(f"run {run.id} is {run.status}; only {', '.join(RETRYABLE)} runs can be retried")
    run.status, run.stage, run.error = "queued", None, None
    run.worker_id, run.lease_expires_at, run.finished_at = None, None, None
    touch(session, run)
    log_event(session, run.id, "info", "queued again (retry)")
    return run


def export_run(session: Session, run: Run) -> dict[str, Any]:
    """Everything about one run in one JSON document, every metric point included."""
    assert run.id is not None  # a stored run
    metrics: dict[str, list[list[float]]] = {}
    rows = session.exec(
        select(MetricPoint.key, MetricPoint.step, MetricPoint.value, MetricPoint.wall_time)
        .where(MetricPoint.run_id == run.id)
        .order_by(col(MetricPoint.key), col(MetricPoint.step))
    )
    for key, step, value, wall_time in rows:
        metrics.setdefault(key, []).append([step, value, wall_time])
    nonfinite: dict[str, list[list[Any]]] = {}  # [step, "nan" | "inf" | "-inf", wall_time]
    for point in session.exec(
        select(MetricNonFinite)
        .where(MetricNonFinite.run_id == run.id)
        .order_by(col(MetricNonFinite.key), col(MetricNonFinite.step))
    ):
        nonfinite.setdefault(point.key, []).append([point.step, point.value, point.wall_time])
    events = session.exec(select(Event).where(Event.run_id == run.id).order_by(col(Event.id)))
    return {
        "run": run_summary(run),
        "config": run.config,
        "checklist": checklist(session, run),
        "metrics": metrics,
        "nonfinite_metrics": nonfinite,
        "checkpoints": [{**checkpoint_dict(c), "download": download_where(c)} for c in checkpoints(session, run.id)],
        "evaluations": [evaluation_dict(e) for e in evaluations(session, run.id)],
        "device_check": run.device_check,
        "events": [event_dict(e) for e in events],
    }


HISTORY_COLUMNS = ["key", "step", "value", "wall_time"]
HISTORY_CHUNK = 20_000


def metric_history(db: Database, run_id: int) -> Iterator[list[Any]]:
    """Every recorded point of the run, by key and step, NaN and infinities as text. Read
    in chunks, each in its own short transaction: a million-point history neither sits in
    memory nor holds a read transaction open while a slow client downloads it."""
    with db.read() as session:
        keys = sorted(
            set(metric_keys(session, run_id))
            | set(session.exec(select(MetricNonFinite.key).where(MetricNonFinite.run_id == run_id).distinct()))
        )
    for key in keys:
        with db.read() as session:
            nonfinite = [
                [key, p.step, p.value, p.wall_time]
                for p in session.exec(
                    select(MetricNonFinite)
                    .where(MetricNonFinite.run_id == run_id, MetricNonFinite.key == key)
                    .order_by(col(MetricNonFinite.step))
                )
            ]
        yield from heapq.merge(_finite(db, run_id, key), nonfinite, key=lambda r: r[1])


def _finite(db: Database, run_id: int, key: str) -> Iterator[list[Any]]:
    after = None
    while True:
        with db.read() as session:
            stmt = select(MetricPoint.step, MetricPoint.value, MetricPoint.wall_time).where(
                MetricPoint.run_id == run_id, MetricPoint.key == key
            )
            if after is not None:
                stmt = stmt.where(col(MetricPoint.step) > after)
            rows = list(session.exec(stmt.order_by(col(MetricPoint.step)).limit(HISTORY_CHUNK)))
        yield from ([key, step, value, wall] for step, value, wall in rows)
        if len(rows) < HISTORY_CHUNK:
            return
        after = rows[-1][0]


def clean_tags(tags: list[str]) -> list[str]:
    """Trimmed, without duplicates, in the order given."""
    out: list[str] = []
    for tag in (t.strip() for t in tags):
        if tag and tag not in out:
            out.append(tag)
    return out


def update_labels(session: Session, run: Run, changes: dict[str, Any]) -> Run:
    """Tags, note and archived are the user's own labels: any run takes them, in any state."""
    if "tags" in changes:
        run.tags = clean_tags(changes["tags"])
    if "note" in changes:
        run.note = (changes["note"] or "").strip() or None
    if "archived" in changes:
        run.archived = bool(changes["archived"])
    touch(session, run)
    return run


def local_paths(run: Run, data_dir: Path) -> list[Path]:
    """What this machine holds of the run: its figures, its evaluation artifacts, and the
    work folder of the worker that `dlite up` starts beside the server."""
    return [
        data_dir / "results" / str(run.id),
        artifacts.run_dir(data_dir, stored_id(run)),
        data_dir / "worker" / "runs" / run.uuid,
    ]


def delete_run(session: Session, run: Run, data_dir: Path) -> list[Path]:
    """Deletes the rows (children cascade) and returns the local folders to remove once
    that has committed. A running run is refused: its worker would keep writing to it."""
    if run.status == "running":
        raise Conflict(f"run {run.id} is running; cancel it first, then delete it")
    summary = run_summary(run)
    session.delete(run)
    session.flush()
    record_change(session, None, "run", {**summary, "deleted": True})
    log_event(session, None, "info", f"run {run.id} ({run.name or run.task}) deleted; its Hub files stay")
    return [p for p in local_paths(run, data_dir) if p.is_dir()]


def remove_paths(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
