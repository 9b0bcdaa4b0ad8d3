"""The runs list for hundreds of runs: filters, sort, pages with a total. What a user does
to one run (its labels, its deletion) is app.services.runs."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, col, select

from app.models import Run

SORTS = {
    "newest": (col(Run.created_at).desc(), col(Run.id).desc()),
    "oldest": (col(Run.created_at), col(Run.id)),
    "name": (col(Run.name), col(Run.id)),
    "task": (col(Run.task), col(Run.id)),
    "status": (col(Run.status), col(Run.id)),
    "progress": (col(Run.step).desc(), col(Run.id)),
}
ARCHIVED = ("hide", "include", "only")


@dataclass(frozen=True)
class RunFilter:
    task: str | None = None
    status: str | None = None
    sweep_id: int | None = None
    tag: str | None = None
    archived: str = "hide"


def query_runs(
    session: Session, f: RunFilter, sort: str = "newest", limit: int = 50, offset: int = 0
) -> tuple[list[Run], int]:
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
