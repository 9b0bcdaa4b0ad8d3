"""Why a run is not moving: a queued run's place in the queue and what it waits for, and a
running run whose worker has gone silent (it is requeued only when its lease runs out, so
until then the page says "worker lost" instead of "running" with a clock still counting)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_
from sqlmodel import Session, col, select

from app.models import Run, Worker
from app.services.events import now

MISSED_HEARTBEATS = 2
"""A worker heartbeats every lease/3 seconds; after this many missed ones it counts as lost."""


def queue_place(session: Session, run: Run, lease_seconds: float) -> dict[str, Any] | None:
    """A queued run's place (claims take the oldest first: created_at, then id), how many
    workers are connected (seen within a lease) and busy, and in words what it waits for."""
    if run.status != "queued":
        return None
    ahead = session.exec(
        select(func.count())
        .select_from(Run)
        .where(
            Run.status == "queued",
            or_(
                col(Run.created_at) < run.created_at, and_(col(Run.created_at) == run.created_at, col(Run.id) < run.id)
            ),
        )
    ).one()
    online = set(session.exec(select(Worker.id).where(col(Worker.last_seen) >= now() - lease_seconds)))
    busy = {w for w in session.exec(select(Run.worker_id).where(Run.status == "running")) if w in online}
    if not online:
        why = (
            "no worker is connected: start one with dlite worker --server and this dashboard's address, "
            "or restart dlite up, which starts one beside the server"
        )
    elif len(busy) == len(online):
        why = f"every connected worker is busy ({len(busy)} running)"
    else:
        why = "a free worker takes the oldest queued run at its next poll (every few seconds)"
    return {
        "position": ahead + 1,
        "ahead": ahead,
        "workers": len(online),
        "busy": len(busy),
        "why": why if not ahead else f"{ahead} older run{'s' if ahead > 1 else ''} first; {why}",
    }


def worker_lost(status: str, lease_expires_at: float | None, lease_seconds: float) -> dict[str, float] | None:
    """For a running run (its status and lease: a run list row has them too) whose worker
    missed its heartbeats: how long it has been silent and when its lease runs out (then the
    run is queued again and any worker resumes it)."""
    if status != "running" or lease_expires_at is None:
        return None
    last_heartbeat = lease_expires_at - lease_seconds
    silent = now() - last_heartbeat
    if silent <= MISSED_HEARTBEATS * lease_seconds / 3:
        return None
    return {
        "silent_s": silent,
        "expires_in_s": max(lease_expires_at - now(), 0.0),
        "last_heartbeat": last_heartbeat,
    }
