"""What a worker reports about a run besides metrics: checklist, checkpoints, evaluations,
the device check.

Checklist items, checkpoints and evaluations are upserts keyed by (run, key),
(run, step) and (run, step, kind, variant), so a worker that repeats a report after a
network error, or a resumed attempt that evaluates the same step again, adds no row.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from app.models import ChecklistItem, Checkpoint, Evaluation, Run
from app.protocol import checklist_label
from app.services.events import log_event, now, record_change
from app.services.runs import checkpoint_dict, evaluation_dict, touch


def note_logged_step(session: Session, run: Run, step: int) -> None:
    """Logged metrics are the freshest progress: heartbeats come only every lease/3 s."""
    if step > run.step:
        run.step = step
        touch(session, run)


def verify_checklist(session: Session, run: Run, key: str, detail: str | None, failed: bool = False) -> ChecklistItem:
    """Ticks (✓) or fails (✗) an item; a later report of the same item replaces it."""
    item = session.exec(select(ChecklistItem).where(ChecklistItem.run_id == run.id, ChecklistItem.key == key)).first()
    if item is None:
        item = ChecklistItem(run_id=run.id, key=key, verified_at=now())
    item.detail, item.verified_at, item.failed, item.attempt = detail, now(), failed, run.attempt
    session.add(item)
    session.flush()
    label = checklist_label(key, run.config)
    record_change(
        session,
        run.id,
        "checklist",
        {"key": key, "label": label, "detail": detail, "verified_at": item.verified_at, "failed": failed},
    )
    log_event(
        session,
        run.id,
        "error" if failed else "info",
        f"{'✗' if failed else '✓'} {label}" + (f" ({detail})" if detail else ""),
    )
    return item


def record_checkpoint(session: Session, run: Run, fields: dict[str, Any]) -> Checkpoint:
    """Create or update the checkpoint at `fields['step']`; stamp the time it reached the Hub."""
    ckpt = session.exec(
        select(Checkpoint).where(Checkpoint.run_id == run.id, Checkpoint.step == fields["step"])
    ).first()
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
    evaluation = session.exec(
        select(Evaluation).where(
            Evaluation.run_id == run.id,
            Evaluation.step == fields["step"],
            Evaluation.kind == fields["kind"],
            Evaluation.variant == fields["variant"],
        )
    ).first()
    if evaluation is None:
        evaluation = Evaluation(run_id=run.id, created_at=now(), **fields)
    else:
        for name, value in {**fields, "created_at": now()}.items():
            setattr(evaluation, name, value)
    session.add(evaluation)
    session.flush()
    record_change(session, run.id, "evaluation", evaluation_dict(evaluation))
    log_event(
        session,
        run.id,
        "info",
        f"{evaluation.kind} evaluation at step {evaluation.step}: "
        f"{evaluation.score_mean:.1f} ± {evaluation.score_std:.1f}",
    )
    return evaluation


def record_device_check(session: Session, run: Run, report: dict[str, Any]) -> None:
    """Keeps only the newest report: a resumed attempt checks again, on what may be another
    device, and its paths are the ones the run goes on with. The report keeps its `attempt`,
    so a reader (the notebook) can tell this attempt's check from an earlier one's."""
    run.device_check = report
    touch(session, run)
    record_change(session, run.id, "device_check", report)
