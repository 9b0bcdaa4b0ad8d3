"""What a worker reports about a run besides metrics: checklist, checkpoints, evaluations.

Checklist items and checkpoints are upserts keyed by (run, key) and (run, step), so a
worker that repeats a report after a network error changes nothing.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from app.models import Checkpoint, ChecklistItem, Evaluation, Run
from app.protocol import checklist_label
from app.services.events import log_event, now, record_change
from app.services.runs import checkpoint_dict, evaluation_dict, touch


def note_logged_step(session: Session, run: Run, step: int) -> None:
    """Logged metrics are the freshest progress: heartbeats come only every lease/3 s."""
    if step > run.step:
        run.step = step
        touch(session, run)


def verify_checklist(session: Session, run: Run, key: str, detail: str | None) -> ChecklistItem:
    item = session.exec(select(ChecklistItem).where(
        ChecklistItem.run_id == run.id, ChecklistItem.key == key)).first()
    if item is None:
        item = ChecklistItem(run_id=run.id, key=key, verified_at=now())
    item.detail, item.verified_at = detail, now()
    session.add(item)
    session.flush()
    label = checklist_label(key, run.config)
    record_change(session, run.id, "checklist", {"key": key, "label": label, "detail": detail,
                                                 "verified_at": item.verified_at})
    log_event(session, run.id, "info", f"✓ {label}" + (f" ({detail})" if detail else ""))
    return item


def record_checkpoint(session: Session, run: Run, fields: dict[str, Any]) -> Checkpoint:
    """Create or update the checkpoint at `fields['step']`; stamp the time it reached the Hub."""
    ckpt = session.exec(select(Checkpoint).where(
        Checkpoint.run_id == run.id, Checkpoint.step == fields["step"])).first()
    if ckpt is None:
        ckpt = Checkpoint(run_id=run.id, **fields)
    else:
        for name, value in fields.items():
            setattr(ckpt, name, value)
    if ckpt.backup_state == "hub" and ckpt.backed_up_at is None:
        ckpt.backed_up_at = now()
    session.add(ckpt)
    session.flush()
    record_change(session, run.id, "checkpoint", checkpoint_dict(ckpt))
    return ckpt


def record_evaluation(session: Session, run: Run, fields: dict[str, Any]) -> Evaluation:
    evaluation = Evaluation(run_id=run.id, created_at=now(), **fields)
    session.add(evaluation)
    session.flush()
    record_change(session, run.id, "evaluation", evaluation_dict(evaluation))
    log_event(session, run.id, "info", f"{evaluation.kind} evaluation at step {evaluation.step}: "
                                       f"{evaluation.score_mean:.1f} ± {evaluation.score_std:.1f}")
    return evaluation
