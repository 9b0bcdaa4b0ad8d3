"""The runs list's query: filters, sort and page, shared by GET /api/runs and the runs page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

from fastapi import Query
from sqlmodel import Session, col, select

from app.models import Sweep
from app.protocol import MAX_INT, SHORT_TEXT
from app.services.run_list import RunFilter
from dlite.tasks import TASKS

RUNS_PER_PAGE = 50
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")

Sort = Literal["newest", "oldest", "name", "task", "status", "progress"]
Archived = Literal["hide", "include", "only"]


@dataclass
class RunListQuery:
    task: str | None = Query(None, max_length=SHORT_TEXT, description="only runs of this task")
    status: str | None = Query(None, max_length=SHORT_TEXT, description="only runs in this status")
    sweep: str | None = Query(None, pattern=r"^\d{0,18}$", description="only runs of this sweep (its id)")
    """Text, so the page's filter form may send it empty ("all")."""
    tag: str | None = Query(None, max_length=SHORT_TEXT, description="only runs with this tag")
    archived: Archived = Query("hide", description="archived runs: hide, include or only")
    sort: Sort = Query("newest", description="order of the runs")
    limit: int = Query(500, ge=1, le=1000, description="runs per page")
    offset: int = Query(0, ge=0, le=MAX_INT, description="runs skipped before this page")

    def filter(self) -> RunFilter:
        return RunFilter(
            task=self.task or None,
            status=self.status or None,
            sweep_id=self.sweep_id,
            tag=self.tag or None,
            archived=self.archived,
        )

    @property
    def sweep_id(self) -> int | None:
        return int(self.sweep) if self.sweep else None

    def query_string(self, **changes: object) -> str:
        """This query with some values changed, for page links; defaults are left out."""
        values = {**self.__dict__, **changes}
        defaults = {"archived": "hide", "sort": "newest", "offset": 0}
        return urlencode(
            {k: v for k, v in values.items() if v not in (None, "") and defaults.get(k) != v and k != "limit"}
        )


def run_list_page(session: Session, query: RunListQuery, total: int, shown: int) -> dict[str, Any]:
    """The runs page's filter choices and where its page links go."""
    first = query.offset + 1 if shown else 0
    return {
        "query": query,
        "total": total,
        "first": first,
        "last": query.offset + shown,
        "prev": query.query_string(offset=max(query.offset - RUNS_PER_PAGE, 0)) if query.offset else None,
        "next": query.query_string(offset=query.offset + RUNS_PER_PAGE) if query.offset + shown < total else None,
        "here": query.query_string(),
        "tasks": list(TASKS),
        "statuses": STATUSES,
        "sweeps": [(s.id, s.name) for s in session.exec(select(Sweep).order_by(col(Sweep.id).desc()))],
    }
