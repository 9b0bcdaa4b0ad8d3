"""Where a run's curves change for a reason the curves cannot show, for the charts to mark
with a vertical line: the step reflow starts (an R2 run's loss drops about 100× there,
because reflow fine-tunes on pairs the R1 model drew, with the same loss keys and steps
that continue R1's) and each step an attempt resumed from a checkpoint (the worker's
event, app.protocol.RESUMED)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from app.models import Event, MetricPoint, Run
from app.protocol import RESUMED
from dlite.config import ConfigError, from_dict, level_loss_keys


def reflow_start(run: Run) -> int | None:
    """The step after which an R2 run's points are reflow's: R1's last step (its steps run
    on from there, dlite.config.Config.run_steps). None for R1, or a config this version
    cannot read."""
    if run.config.get("variant") != "R2":
        return None
    try:
        return from_dict(run.config).total_steps
    except ConfigError:
        return None


def _reflow_mark(session: Session, run: Run) -> dict[str, Any] | None:
    """The reflow line, once reflow has logged a point; its wall time is that point's, so
    the line sits where the curve changes on a wall-time axis too. One key's primary-key
    range is read (the first level's loss), never the run's whole history."""
    start = reflow_start(run)
    if start is None:
        return None
    key = level_loss_keys(1)[0]
    wall = session.exec(
        select(MetricPoint.wall_time)
        .where(MetricPoint.run_id == run.id, MetricPoint.key == key, col(MetricPoint.step) > start)
        .order_by(col(MetricPoint.step))
        .limit(1)
    ).first()
    if wall is None:
        return None
    return {"kind": "reflow", "step": start, "wall_time": wall, "label": "reflow starts"}


def _resume_marks(session: Session, run: Run) -> list[dict[str, Any]]:
    """One line per resumed attempt, at the checkpoint's step and the event's time."""
    events = session.exec(
        select(Event.message, Event.ts)
        .where(Event.run_id == run.id, col(Event.message).contains(" resumed from step "))
        .order_by(col(Event.id))
    )
    marks = []
    for message, ts in events:
        found = RESUMED.match(message)
        if found:
            step = int(found.group(1))
            marks.append({"kind": "resume", "step": step, "wall_time": ts, "label": f"resumed from step {step:,}"})
    return marks


def stage_marks(session: Session, run: Run) -> list[dict[str, Any]]:
    """The run's marks in step order: kind ('reflow' or 'resume'), step, wall time, label."""
    reflow = _reflow_mark(session, run)
    return sorted(([reflow] if reflow else []) + _resume_marks(session, run), key=lambda m: (m["step"], m["kind"]))
