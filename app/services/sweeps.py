"""Sweeps: one request queues tasks × seeds × variants as ordinary runs (claimable by any
worker, resumable, cancellable one by one) and groups them for progress and results.

A sweep's run is named `[<sweep name>/]<task>/<variant>/seed<seed>`: the name is the run's
folder in its backup target, so queuing the same sweep again on a fresh machine finds
the backups of the first one. Only a name the user chose goes into it; a generated one
("sweep 3") depends on the database and would not.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlmodel import Session, col, select

from app.models import Run, Sweep
from app.services import Conflict, NotFound
from app.services.events import log_event, now
from app.services.runs import cancel_run, create_run, run_summary
from dlite.config import ConfigError

ENDED = ("succeeded", "failed", "cancelled")

SWEEP_KEYS = ("task", "seed", "variant")
"""Config keys a sweep varies itself; its `config` overrides must not set them."""


def run_name(sweep_name: str | None, task: str, variant: str, seed: int) -> str:
    return f"{sweep_name + '/' if sweep_name else ''}{task}/{variant}/seed{seed}"


def create_sweep(session: Session, name: str | None, tasks: list[str], seeds: list[int],
                 variants: list[str], overrides: dict[str, Any], is_demo: bool = False) -> Sweep:
    """Every run's config is resolved before any is stored: one bad combination queues nothing."""
    for key in SWEEP_KEYS:
        if key in overrides:
            raise ConfigError(key, f"a sweep sets {key} itself: list it in the sweep's {key}s instead of config")
    if name is not None and session.exec(select(Sweep).where(Sweep.name == name)).first() is not None:
        raise Conflict(f"a sweep named {name!r} exists already; choose another name, or retry that sweep's runs")
    t = now()
    sweep = Sweep(name=name or f"unnamed-{uuid.uuid4().hex}", tasks=tasks, seeds=seeds, variants=variants,
                  config=overrides, created_at=t)
    session.add(sweep)
    session.flush()
    if name is None:
        sweep.name = f"sweep {sweep.id}"
    for task in tasks:
        for variant in variants:
            for seed in seeds:
                run = create_run(session, task, run_name(name, task, variant, seed),
                                 {**overrides, "seed": seed, "variant": variant}, is_demo)
                run.sweep_id = sweep.id
                session.add(run)
    session.flush()
    return sweep


def get_sweep(session: Session, sweep_id: int) -> Sweep:
    sweep = session.get(Sweep, sweep_id) if 0 < sweep_id <= 2**63 - 1 else None
    if sweep is None:
        raise NotFound(f"sweep {sweep_id} not found; GET /api/sweeps lists the sweeps")
    return sweep


def sweep_runs(session: Session, sweep_id: int) -> list[Run]:
    return list(session.exec(select(Run).where(Run.sweep_id == sweep_id).order_by(col(Run.id))))


def progress(runs: list[Run]) -> dict[str, Any]:
    """Counts by status and an ETA. The speed is the mean measured steps/s of the sweep's
    running runs (else of its finished ones); as many runs go at once as are running now
    (at least one). The ETA counts training steps only (no evaluation or reflow)."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    running = [r for r in runs if r.status == "running"]
    measured = [r.steps_per_s for r in (running or runs) if r.steps_per_s]
    left = sum(max(r.total_steps - r.step, 0) for r in runs if r.status not in ENDED)
    speed = sum(measured) / len(measured) if measured else None
    eta = None if not left or speed is None else left / (speed * max(len(running), 1))
    done = sum(counts.get(s, 0) for s in ENDED)
    return {"total": len(runs), "done": done, "running": counts.get("running", 0),
            "queued": counts.get("queued", 0), "by_status": counts,
            "steps_left": left, "steps_per_s": speed, "eta_s": eta}


def sweep_summary(sweep: Sweep, runs: list[Run]) -> dict[str, Any]:
    return {"id": sweep.id, "name": sweep.name, "tasks": sweep.tasks, "seeds": sweep.seeds,
            "variants": sweep.variants, "config": sweep.config, "created_at": sweep.created_at,
            "cancelled_at": sweep.cancelled_at, "progress": progress(runs)}


def sweep_detail(session: Session, sweep: Sweep) -> dict[str, Any]:
    runs = sweep_runs(session, sweep.id)
    return {**sweep_summary(sweep, runs), "runs": [run_summary(r) for r in runs]}


def list_sweeps(session: Session) -> list[dict[str, Any]]:
    sweeps = list(session.exec(select(Sweep).order_by(col(Sweep.id).desc())))
    by_sweep: dict[int, list[Run]] = {s.id: [] for s in sweeps}
    for run in session.exec(select(Run).where(col(Run.sweep_id).in_(list(by_sweep)))):
        by_sweep[run.sweep_id].append(run)
    return [sweep_summary(s, by_sweep[s.id]) for s in sweeps]


def cancel_sweep(session: Session, sweep: Sweep) -> dict[str, Any]:
    """Queued runs are cancelled at once, running ones asked through their workers; runs
    that have ended stay as they are (their results still count)."""
    cancelled, asked = [], []
    for run in sweep_runs(session, sweep.id):
        if run.status in ENDED:
            continue
        if run.status == "running":
            cancel_run(session, run)
            asked.append(run.id)
        else:
            run.status = "queued"  # interrupted: a lost lease, about to be queued again
            cancel_run(session, run)
            cancelled.append(run.id)
    sweep.cancelled_at = now()
    session.add(sweep)
    log_event(session, None, "info", f"sweep {sweep.name} cancelled: {len(cancelled)} queued runs cancelled, "
                                     f"{len(asked)} running runs asked to stop")
    return {"cancelled": cancelled, "asked_to_stop": asked}
