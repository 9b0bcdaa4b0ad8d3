"""Workers, claims, leases and the attempt fence.

A claimed run carries a lease the worker extends with heartbeats. A run whose lease
ran out is presumed abandoned: it becomes `interrupted`, then `queued` again, and the
next claim bumps `attempt`. Every worker write names its attempt and is refused (409)
unless it matches the run's current one while the run is `running`, so a worker that
was presumed dead cannot write into the run's next life.
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import exists, update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from app.db import Database
from app.models import Command, Run, Worker, stored_id
from app.services import Conflict, NotFound, Retired, workers
from app.services.events import log_event, now
from app.services.runs import get_run, pending_commands, touch

CLAIM_TRIES = 5


def register_worker(
    session: Session, name: str, host: str | None, device: str | None, gpu_name: str | None, provider: str | None = None
) -> Worker:
    worker = Worker(
        id=uuid.uuid4().hex, name=name, host=host, device=device, gpu_name=gpu_name, provider=provider, last_seen=now()
    )
    session.add(worker)
    session.flush()
    log_event(
        session,
        None,
        "info",
        f"worker {name} registered ({device or 'no device'}"
        f"{', ' + gpu_name if gpu_name else ''}{', on ' + provider if provider else ''})",
    )
    return worker


def has_expired_leases(session: Session) -> bool:
    """A cheap read, so list calls only take the write lock when there is work to do."""
    return session.exec(select(exists().where(col(Run.status) == "running", col(Run.lease_expires_at) < now()))).one()


def requeue_expired(session: Session) -> list[int]:
    """running → interrupted → queued for every lost lease; checkpoints and metrics stay.

    A run whose cancel was pending is cancelled instead, and pending backup requests go
    back to `queued` so the next attempt receives them.
    """
    expired = list(session.exec(select(Run).where(Run.status == "running", col(Run.lease_expires_at) < now())))
    for run in expired:
        release(session, run, f"lease of attempt {run.attempt} expired (worker {run.worker_id} silent)", "warning")
    return [run.id for run in expired]


def release(session: Session, run: Run, why: str, level: str = "info") -> None:
    """running → interrupted → queued (or cancelled, when a cancel was pending). A pending
    stop is done (its worker has let go); other pending commands wait for the next attempt."""
    run.status = "interrupted"
    touch(session, run)
    log_event(session, run.id, level, why)
    pending = pending_commands(session, stored_id(run))
    cancel = any(c.kind == "cancel" for c in pending)
    for command in pending:
        command.state, command.updated_at = ("done" if cancel or command.kind == "stop" else "queued"), now()
        session.add(command)
    run.worker_id, run.lease_expires_at = None, None
    if cancel:
        run.status, run.finished_at = "cancelled", now()
        log_event(session, run.id, "info", "cancelled (its worker was gone)")
    else:
        run.status = "queued"
        log_event(session, run.id, "info", f"queued again for attempt {run.attempt + 1}")
    touch(session, run)


def sweep_leases(db: Database) -> list[int]:
    """Requeue lost leases if there are any (lazily from claims and lists, and periodically)."""
    with db.read() as session:
        if not has_expired_leases(session):
            return []
    with db.write() as session:
        return requeue_expired(session)


def grant_restart_grace(db: Database, lease_seconds: float) -> list[int]:
    """At server start, extend every running lease to at least one lease length from now.

    While the server was down no heartbeat could arrive, so a lease that ran out in the
    meantime says nothing about the worker: a live one reconnects within lease/3 seconds
    and keeps its run; a dead one loses it one lease length later.
    """
    with db.write() as session:
        runs = list(session.exec(select(Run).where(Run.status == "running")))
        until = now() + lease_seconds
        for run in runs:
            if run.lease_expires_at is None or run.lease_expires_at < until:
                run.lease_expires_at = until
                touch(session, run)
                log_event(
                    session,
                    run.id,
                    "info",
                    f"server started: attempt {run.attempt} keeps its lease "
                    f"for {lease_seconds:.0f} s while its worker reconnects",
                )
        return [run.id for run in runs]


def claim_next(db: Database, worker_id: str, lease_seconds: float) -> Run | None:
    """Atomically hand the oldest queued run to a worker, or None when none is queued.

    One UPDATE picks and takes the run. On SQLite the write transaction holds the
    database lock (BEGIN IMMEDIATE); on PostgreSQL the subquery's FOR UPDATE SKIP LOCKED
    lets concurrent claims pass over a row another claim is taking. The status check in
    the outer WHERE and the rowcount make a lost race harmless: we simply try again.
    """
    sweep_leases(db)
    oldest = (
        select(Run.id)
        .where(Run.status == "queued")
        .order_by(col(Run.created_at), col(Run.id))
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    refused = None
    for attempt in range(CLAIM_TRIES):
        try:
            with db.write() as session:
                worker = session.get(Worker, worker_id)
                if worker is None:
                    raise NotFound(f"worker {worker_id} is not registered")
                worker.last_seen = t = now()
                session.add(worker)
                refused = workers.refusal(session, worker)
                if refused is not None:
                    break  # committed: the worker shows as exited
                row = session.execute(
                    update(Run)
                    .where(col(Run.id) == oldest, col(Run.status) == "queued")
                    .values(
                        status="running",
                        attempt=Run.attempt + 1,
                        worker_id=worker_id,
                        lease_expires_at=t + lease_seconds,
                        stage=None,
                        error=None,
                    )
                    .returning(col(Run.id))
                ).first()
                if row is None:
                    if session.exec(select(exists().where(col(Run.status) == "queued"))).one():
                        continue  # lost a race for the only visible row; look again
                    return None
                run = session.get(Run, row[0], populate_existing=True)
                assert run is not None  # this transaction has just updated its row
                worker.runs_claimed += 1
                if run.started_at is None:
                    run.started_at = t
                touch(session, run)
                log_event(session, run.id, "info", f"attempt {run.attempt} claimed by worker {worker.name}")
                return run
        except OperationalError as exc:  # SQLITE_BUSY past the busy timeout
            if "locked" not in str(exc) or attempt == CLAIM_TRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    if refused is not None:
        raise Retired(refused)
    return None


def fenced_run(session: Session, run_id: int, attempt: int) -> Run:
    """The run, if `attempt` is its current attempt and it is running; 409 otherwise."""
    run = get_run(session, run_id)
    if run.status != "running" or run.attempt != attempt:
        raise Conflict(
            f"run {run_id} is {run.status} at attempt {run.attempt}; writes of attempt {attempt} are refused"
        )
    return run


def earlier_attempt_run(session: Session, run_id: int, attempt: int) -> Run:
    """The run, for late metric points of an attempt that was fenced off; 409 for an attempt
    the run has not reached."""
    run = get_run(session, run_id)
    if attempt > run.attempt:
        raise Conflict(f"run {run_id} is at attempt {run.attempt}; attempt {attempt} does not exist")
    return run


def heartbeat(session: Session, run: Run, step: int, steps_per_s: float | None, lease_seconds: float) -> list[Command]:
    """Extend the lease, record progress, and hand over commands not yet sent."""
    run.step, run.steps_per_s = step, steps_per_s
    run.lease_expires_at = now() + lease_seconds
    touch(session, run)
    worker = session.get(Worker, run.worker_id) if run.worker_id else None
    if worker is not None:
        worker.last_seen = now()
        session.add(worker)
    commands = list(
        session.exec(
            select(Command).where(Command.run_id == run.id, Command.state == "queued").order_by(col(Command.id))
        )
    )
    for command in commands:
        command.state, command.updated_at = "sent", now()
        session.add(command)
    return commands


def set_stage(session: Session, run: Run, stage: str) -> None:
    if run.stage != stage:
        run.stage = stage
        touch(session, run)
        log_event(session, run.id, "info", f"stage {stage} started")


def update_command(session: Session, run: Run, command_id: int, state: str, detail: str | None) -> Command:
    command = session.get(Command, command_id)
    if command is None or command.run_id != run.id:
        raise NotFound(f"command {command_id} of run {run.id} not found")
    command.state, command.detail, command.updated_at = state, detail, now()
    session.add(command)
    log_event(
        session,
        run.id,
        "error" if state == "error" else "info",
        f"{command.kind} command {state}" + (f": {detail}" if detail else ""),
    )
    if command.kind == "stop" and state == "done":  # its checkpoint is saved: the next worker need not wait
        release(session, run, f"attempt {run.attempt} stopped at a checkpoint (its worker was asked to stop)")
    return command


def finish(session: Session, run: Run, status: str, error: str | None) -> Run:
    """End the attempt; any still-pending cancel is thereby done."""
    run.status, run.error = status, error
    run.finished_at, run.lease_expires_at = now(), None
    for command in pending_commands(session, stored_id(run)):
        done = command.kind in ("cancel", "stop")  # a stop's worker exits at its next claim
        command.state, command.updated_at = ("done" if done else "error"), now()
        if not done:
            command.detail = f"run ended ({status}) before the command ran"
        session.add(command)
    touch(session, run)
    log_event(
        session, run.id, "error" if status == "failed" else "info", f"run {status}" + (f": {error}" if error else "")
    )
    return run
