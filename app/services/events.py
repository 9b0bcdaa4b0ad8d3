"""Run event log and the change feed behind server-sent events.

Every state change appends one `changes` row in the same transaction as the change
itself, so a reader that polls `id > last_seen` sees each change exactly once, in
commit order, from any process.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, text
from sqlmodel import Session, col, select

from app.models import Change, Event

RUN_LIST_KINDS = ("run", "event")  # what the all-runs stream carries


def now() -> float:
    return time.time()


def record_change(session: Session, run_id: int | None, kind: str, data: dict[str, Any]) -> None:
    """Append to the feed. On PostgreSQL an advisory lock held until commit makes ids
    commit in order; otherwise a reader could pass id 11 before id 10 commits."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7315)"))
    session.add(Change(run_id=run_id, kind=kind, data=data, ts=now()))


def event_dict(event: Event) -> dict[str, Any]:
    return {"id": event.id, "run_id": event.run_id, "ts": event.ts, "level": event.level, "message": event.message}


def log_event(session: Session, run_id: int | None, level: str, message: str) -> Event:
    event = Event(run_id=run_id, ts=now(), level=level, message=message)
    session.add(event)
    session.flush()
    record_change(session, run_id, "event", event_dict(event))
    return event


def list_events(
    session: Session, run_id: int, since_id: int = 0, limit: int = 1000, newest_first: bool = False
) -> list[Event]:
    order = col(Event.id).desc() if newest_first else col(Event.id)
    stmt = select(Event).where(Event.run_id == run_id, col(Event.id) > since_id).order_by(order).limit(limit)
    return list(session.exec(stmt))


def latest_change_id(session: Session) -> int:
    return session.exec(select(func.coalesce(func.max(Change.id), 0))).one()  # type: ignore[return-value]  # SQLAlchemy types coalesce(x, 0) like x


def changes_since(session: Session, since_id: int, run_id: int | None = None, limit: int = 500) -> list[Change]:
    """Changes of one run, or for the all-runs stream the run and event changes of all."""
    stmt = select(Change).where(col(Change.id) > since_id)
    if run_id is None:
        stmt = stmt.where(col(Change.kind).in_(RUN_LIST_KINDS))
    else:
        stmt = stmt.where(Change.run_id == run_id)
    return list(session.exec(stmt.order_by(col(Change.id)).limit(limit)))
