"""A run's console: the newest lines of its worker's log, shown live on the run page.

A chatty or looping worker must not fill the database, so only the newest `KEEP` entries
of a run are kept (each at most `app.protocol.CONSOLE_TEXT` characters: a few MB per run
at worst). The worker redacts lines before they leave it; the server stores them as sent.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlmodel import Session, col, select

from app.models import ConsoleLine, Run
from app.services.events import record_change

KEEP = 1000
"""Console entries kept per run; older ones are deleted as new ones come."""

_TRIM = text(
    "DELETE FROM console_lines WHERE run_id = :run AND id <= (SELECT id FROM console_lines"
    " WHERE run_id = :run ORDER BY id DESC LIMIT 1 OFFSET :keep)"
)


def append_lines(session: Session, run: Run, lines: list[dict[str, Any]]) -> int:
    """Store new lines, skipping any the run already has (the worker's outbox sends a write
    again after a crash), then drop all but the newest `KEEP`. Returns how many were new.
    The worker's outbox delivers one write at a time, so no other request adds the same uid."""
    uids = [line["uid"] for line in lines]
    known = set(
        session.exec(select(ConsoleLine.uid).where(ConsoleLine.run_id == run.id, col(ConsoleLine.uid).in_(uids)))
    )
    fresh = [line for line in lines if line["uid"] not in known]
    for line in fresh:
        session.add(ConsoleLine(run_id=run.id, attempt=run.attempt, **line))
    if fresh:
        session.flush()
        session.execute(_TRIM, {"run": run.id, "keep": KEEP})
        record_change(session, run.id, "console", {"added": len(fresh)})
    return len(fresh)


def newest_lines(session: Session, run_id: int, limit: int = KEEP) -> list[ConsoleLine]:
    """The run's newest `limit` console entries, oldest first."""
    stmt = select(ConsoleLine).where(ConsoleLine.run_id == run_id).order_by(col(ConsoleLine.id).desc()).limit(limit)
    return list(reversed(list(session.exec(stmt))))
