"""The runs list for hundreds of runs: filters, sort, pages with a total, and the labels a
user puts on a run (tags, a note, archived). Deleting a run removes its rows and the files
this machine holds for it; its Hub or backup-folder copies are the user's and stay."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import func
from sqlmodel import Session, col, select

from app.models import Run
from app.services import Conflict, artifacts
from app.services.events import log_event, record_change
from app.services.runs import run_summary, touch

SORTS = {"newest": (col(Run.created_at).desc(), col(Run.id).desc()),
         "oldest": (col(Run.created_at), col(Run.id)),
         "name": (col(Run.name), col(Run.id)),
         "task": (col(Run.task), col(Run.id)),
         "status": (col(Run.status), col(Run.id)),
         "progress": (col(Run.step).desc(), col(Run.id))}
ARCHIVED = ("hide", "include", "only")
MAX_TAGS, MAX_TAG_LENGTH = 20, 40


@dataclass(frozen=True)
class RunFilter:
    task: Optional[str] = None
    status: Optional[str] = None
    sweep_id: Optional[int] = None
    tag: Optional[str] = None
    archived: str = "hide"


def query_runs(session: Session, f: RunFilter, sort: str = "newest", limit: int = 50,
               offset: int = 0) -> tuple[list[Run], int]:
    """One page of runs and how many match in all."""
    stmt = select(Run)
    if f.task:
        stmt = stmt.where(Run.task == f.task)
    if f.status:
        stmt = stmt.where(Run.status == f.status)
    if f.sweep_id is not None:
        stmt = stmt.where(Run.sweep_id == f.sweep_id)
    if f.archived != "include":
        stmt = stmt.where(col(Run.archived).is_(f.archived == "only"))
    if f.tag:  # JSON arrays differ between SQLite and PostgreSQL: match the tag in Python
        ids = [r.id for r in session.exec(stmt) if f.tag in r.tags]
        stmt = select(Run).where(col(Run.id).in_(ids))
    total = session.exec(select(func.count()).select_from(stmt.subquery())).one()
    rows = session.exec(stmt.order_by(*SORTS[sort]).offset(offset).limit(limit))
    return list(rows), total


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
    return [data_dir / "results" / str(run.id), artifacts.run_dir(data_dir, run.id),
            data_dir / "worker" / "runs" / run.uuid]


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
