"""The fleet as the user sees it: every worker that registered, where it runs, what it works
on and whether it is still there; and the user's two levers on it, a cap on the runs one
worker takes and a stop (the worker's current run stops at a checkpoint, goes back to the
queue at once, and the worker exits, which ends a SkyPilot managed job for good)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from app.models import Run, Worker
from app.services import NotFound
from app.services.events import log_event, now
from app.services.runs import queue_command

STATUSES = ("working", "idle", "stopping", "lost", "exited")


def get_worker(session: Session, worker_id: str) -> Worker:
    worker = session.get(Worker, worker_id)
    if worker is None:
        raise NotFound(f"worker {worker_id} is not registered")
    return worker


def status(worker: Worker, run: Run | None, lease_seconds: float) -> str:
    """A worker polls for work every few seconds and heartbeats every lease/3 while it works,
    so one not seen for a whole lease is lost (its run is requeued when the lease runs out)."""
    if worker.exited_at is not None:
        return "exited"
    if now() - worker.last_seen > lease_seconds:
        return "lost"
    if worker.stop_requested_at is not None:
        return "stopping"
    return "working" if run is not None else "idle"


def worker_rows(session: Session, lease_seconds: float) -> list[dict[str, Any]]:
    """Newest first; a worker's current run is the running run holding its lease."""
    workers = list(session.exec(select(Worker).order_by(col(Worker.last_seen).desc())))
    running = {r.worker_id: r for r in session.exec(select(Run).where(Run.status == "running"))}
    return [worker_row(w, running.get(w.id), lease_seconds) for w in workers]


def worker_row(worker: Worker, run: Run | None, lease_seconds: float) -> dict[str, Any]:
    current = (
        None
        if run is None
        else {
            "id": run.id,
            "name": run.name,
            "step": run.step,
            "total_steps": run.total_steps,
            "steps_per_s": run.steps_per_s,
            "sweep_id": run.sweep_id,
            "stage": run.stage,
        }
    )
    return {
        "id": worker.id,
        "name": worker.name,
        "host": worker.host,
        "provider": worker.provider,
        "device": worker.device,
        "gpu_name": worker.gpu_name,
        "last_seen": worker.last_seen,
        "seen_ago_s": max(now() - worker.last_seen, 0.0),
        "status": status(worker, run, lease_seconds),
        "runs_claimed": worker.runs_claimed,
        "max_runs": worker.max_runs,
        "stop_requested_at": worker.stop_requested_at,
        "exited_at": worker.exited_at,
        "run": current,
    }


def set_cap(session: Session, worker: Worker, max_runs: int | None) -> Worker:
    """At the cap the worker finishes its current run and is told to exit at its next claim."""
    worker.max_runs = max_runs
    session.add(worker)
    cap = "no cap" if max_runs is None else f"a cap of {max_runs} run{'s' if max_runs != 1 else ''}"
    log_event(session, None, "info", f"worker {worker.name}: {cap} ({worker.runs_claimed} claimed so far)")
    return worker


def request_stop(session: Session, workers: list[Worker]) -> list[Worker]:
    """Each worker's running run gets a stop command (it checkpoints and is requeued); an idle
    worker is told at its next claim. Workers that exited or were already asked are left."""
    running = {r.worker_id: r for r in session.exec(select(Run).where(Run.status == "running"))}
    asked = []
    for worker in workers:
        if worker.exited_at is not None or worker.stop_requested_at is not None:
            continue
        worker.stop_requested_at = now()
        session.add(worker)
        run = running.get(worker.id)
        if run is not None:
            queue_command(session, run, "stop")
        log_event(
            session,
            run.id if run else None,
            "info",
            f"worker {worker.name} asked to stop"
            + (f": run {run.id} stops at a checkpoint and is queued again" if run else ""),
        )
        asked.append(worker)
    return asked


def live_workers(session: Session) -> list[Worker]:
    return list(session.exec(select(Worker).where(col(Worker.exited_at).is_(None))))


def refusal(session: Session, worker: Worker) -> str | None:
    """Why the worker may claim no more (it was asked to stop, or has claimed its cap), marking
    it exited, as it will be once told; None when it may claim."""
    why = None
    if worker.stop_requested_at is not None:
        why = "it was asked to stop from the dashboard"
    elif worker.max_runs is not None and worker.runs_claimed >= worker.max_runs:
        why = f"it has claimed its cap of {worker.max_runs} run{'s' if worker.max_runs != 1 else ''}"
    if why is not None and worker.exited_at is None:
        worker.exited_at = now()
        session.add(worker)
        log_event(session, None, "info", f"worker {worker.name} told to exit: {why}")
    return None if why is None else f"worker {worker.name} takes no more runs: {why}; it should exit"


def mark_exited(session: Session, worker: Worker) -> None:
    """The worker said it is going away (SIGTERM, its own --max-runs), so it shows as exited, not lost."""
    if worker.exited_at is None:
        worker.exited_at = now()
        session.add(worker)
        log_event(session, None, "info", f"worker {worker.name} exited")
