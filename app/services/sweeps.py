"""Sweeps: one request queues tasks × seeds × variants as ordinary runs (claimable by any
worker, resumable, cancellable one by one) and groups them for progress and results. An
ablation sweep also varies one setting over a list of values on one task (the paper's
Table 6), and records which, so its results can be grouped by it.

A sweep's run is named `[<sweep name>/]<task>/<variant>/[<setting>-<value>/]seed<seed>`: the
name is the run's folder in its backup target, so queuing the same sweep again on a fresh
machine finds the backups of the first one. Only a name the user chose goes into it; a
generated one ("sweep 3") depends on the database and would not.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from app.models import Run, Sweep, stored_id
from app.services import Conflict, NotFound, dashboard
from app.services.events import log_event, now
from app.services.paper_settings import NEUTRAL
from app.services.runs import cancel_run, create_run, run_summary
from dlite.config import FIELDS, Config, ConfigError, from_dict
from dlite.tasks import PAPER_ABLATIONS

ENDED = ("succeeded", "failed", "cancelled")

SWEEP_KEYS = ("task", "seed", "variant")
"""Config keys a sweep varies itself; its `config` overrides must not set them."""
ABLATION_SETTINGS = tuple(name for name in FIELDS if name not in SWEEP_KEYS and name not in NEUTRAL)
"""Settings an ablation may vary: every one that makes a different experiment."""
PAPER_SEEDS = [0, 1, 2, 3, 4]
"""The paper reports mean ± s.e. over 5 seeds."""


@dataclass(frozen=True)
class Ablation:
    """The one setting an ablation sweep varies, and the values it takes."""

    setting: str
    values: list[Any]


class SweepErrors(ValueError):
    """Bad parts of a sweep request, each as (location in the request body, message), so
    a bad ablation value is reported where it is (`ablation.values.<i>`), not in `config`."""

    def __init__(self, errors: list[tuple[tuple[str | int, ...], str]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {m}" for loc, m in errors))
        self.errors = errors


def run_name(sweep_name: str | None, task: str, variant: str, seed: int, varied: str | None = None) -> str:
    """`varied` ("horizons-5-5-9") tells apart the runs of an ablation that share task, variant and seed."""
    return f"{sweep_name + '/' if sweep_name else ''}{task}/{variant}/{varied + '/' if varied else ''}seed{seed}"


def value_label(setting: str, value: Any) -> str:
    """A setting's value as a run-name part: `horizons-5-5-9`, `sampling_steps-3`."""
    return f"{setting}-{'-'.join(map(str, value)) if isinstance(value, list) else value}"


def _ablation_values(task: str, overrides: dict[str, Any], ablation: Ablation) -> list[Any]:
    """The values as a run's config stores them ([9, 17] for (9, 17)), in order, without repeats.
    A value is bad when its run config is: an error in the varied setting, or one that only some
    values cause (n_heads must divide d_model 12), is that value's; one every value causes is
    the overrides', reported in `config` as for any sweep."""
    if ablation.setting in overrides:
        raise SweepErrors(
            [
                (
                    ("config", ablation.setting),
                    "the ablation varies this setting: leave it out of config and list its values in ablation.values",
                )
            ]
        )
    resolved: list[Any] = []
    failures: list[tuple[int, list[tuple[str, str]]]] = []
    for i, value in enumerate(ablation.values):
        try:
            cfg = from_dict({**overrides, "task": task, ablation.setting: value})
        except ConfigError as e:
            failures.append((i, e.errors))
            continue
        if (stored := cfg.to_dict()[ablation.setting]) not in resolved:
            resolved.append(stored)
    common = (
        set.intersection(*(set(es) for _, es in failures))
        if failures and len(failures) == len(ablation.values)
        else set()
    )
    shared = [e for e in dict.fromkeys(e for _, es in failures for e in es) if e in common and e[0] != ablation.setting]
    errors: list[tuple[tuple[str | int, ...], str]] = [(("config", f), m) for f, m in shared]
    errors += [(("ablation", "values", i), f"{f}: {m}") for i, es in failures for f, m in es if (f, m) not in shared]
    if errors:
        raise SweepErrors(errors)
    return resolved


def create_sweep(
    session: Session,
    name: str | None,
    tasks: list[str],
    seeds: list[int],
    variants: list[str],
    overrides: dict[str, Any],
    is_demo: bool = False,
    ablation: Ablation | None = None,
) -> Sweep:
    """Every run's config is resolved before any is stored: one bad combination queues nothing."""
    for key in SWEEP_KEYS:
        if key in overrides:
            raise ConfigError(key, f"a sweep sets {key} itself: list it in the sweep's {key}s instead of config")
    if ablation is not None and len(tasks) != 1:
        raise SweepErrors([(("tasks",), f"an ablation varies one setting on one task; {len(tasks)} tasks given")])
    values = [None] if ablation is None else _ablation_values(tasks[0], overrides, ablation)
    if name is not None and session.exec(select(Sweep).where(Sweep.name == name)).first() is not None:
        raise Conflict(f"a sweep named {name!r} exists already; choose another name, or retry that sweep's runs")
    t = now()
    sweep = Sweep(
        name=name or f"unnamed-{uuid.uuid4().hex}",
        tasks=tasks,
        seeds=seeds,
        variants=variants,
        config=overrides,
        created_at=t,
        ablation_setting=None if ablation is None else ablation.setting,
        ablation_values=None if ablation is None else values,
    )
    session.add(sweep)
    session.flush()
    if name is None:
        sweep.name = f"sweep {sweep.id}"
    for task in tasks:
        for variant in variants:
            for value in values:
                varied = {} if ablation is None else {ablation.setting: value}
                label = None if ablation is None else value_label(ablation.setting, value)
                for seed in seeds:
                    run = create_run(
                        session,
                        task,
                        run_name(name, task, variant, seed, label),
                        {**overrides, **varied, "seed": seed, "variant": variant},
                        is_demo,
                    )
                    run.sweep_id = sweep.id
                    session.add(run)
    session.flush()
    return sweep


def paper_presets() -> list[dict[str, Any]]:
    """One-click sweeps of the paper's ablations (dlite.tasks.PAPER_ABLATIONS) at the paper's
    sizes: the request body that queues each, and its cost in runs and training steps."""
    presets = []
    for key, a in PAPER_ABLATIONS.items():
        values = [list(v) if isinstance(v, tuple) else v for v, _ in a.scores]
        runs = len(values) * len(PAPER_SEEDS)
        presets.append(
            {
                "id": key,
                "title": a.title,
                "task": a.task,
                "setting": a.setting,
                "variant": a.variant,
                "paper": [(v, score) for v, (_, score) in zip(values, a.scores)],
                "runs": runs,
                "steps": runs * Config().run_steps,
                "body": {
                    "name": f"paper-{key}",
                    "tasks": [a.task],
                    "seeds": PAPER_SEEDS,
                    "variants": ["R1"],
                    "config": {},
                    "ablation": {"setting": a.setting, "values": values},
                },
            }
        )
    return presets


def get_sweep(session: Session, sweep_id: int) -> Sweep:
    sweep = session.get(Sweep, sweep_id) if 0 < sweep_id <= 2**63 - 1 else None
    if sweep is None:
        raise NotFound(f"sweep {sweep_id} not found; GET /api/sweeps lists the sweeps")
    return sweep


def sweep_runs(session: Session, sweep_id: int) -> list[Run]:
    return list(session.exec(select(Run).where(Run.sweep_id == sweep_id).order_by(col(Run.id))))


def progress(runs: list[Run]) -> dict[str, Any]:
    """Counts by status (`done`: ended in any way; `succeeded`: what a progress bar shows, so a
    cancelled sweep's bar is not full), the workers on its runs now, their combined measured
    speed and the sweep's ETA (`_eta`)."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    running = [r for r in runs if r.status == "running"]
    measured = [r.steps_per_s for r in (running or runs) if r.steps_per_s]
    speed = sum(measured) / len(measured) if measured else None
    done = sum(counts.get(s, 0) for s in ENDED)
    return {
        "total": len(runs),
        "done": done,
        "succeeded": counts.get("succeeded", 0),
        "running": counts.get("running", 0),
        "queued": counts.get("queued", 0),
        "by_status": counts,
        "steps_left": sum(max(r.total_steps - r.step, 0) for r in runs if r.status not in ENDED),
        "steps_per_s": speed,
        "workers": len({r.worker_id for r in running if r.worker_id}),
        "combined_steps_per_s": sum(r.steps_per_s for r in running if r.steps_per_s) or None,
        "eta_s": _eta(runs, speed),
    }


def _eta(runs: list[Run], speed: float | None) -> float | None:
    """Seconds until the sweep's unfinished runs are done: each one's time left as its run
    page projects it (training, evaluations, R2's pairs and reflow: dashboard.time_left), a run
    not at work yet (or not yet priced) whole at `speed`, the mean speed of one of its runs,
    with the device check of a sibling of its variant for what is not training. The runs at
    work share the queue in proportion to their speeds (a worker twice as fast takes twice as
    many of the queued runs), so each time counts by its worker's share of the sweep's
    combined speed: with equal workers, the sum over their number; with none at work, one run
    at a time. None when some run cannot be priced: nothing measured yet."""
    unit = speed or 1.0  # an unmeasured worker counts as an average one
    capacity = sum(r.steps_per_s or unit for r in runs if r.status == "running") or unit
    checks = {r.config.get("variant"): dashboard.device_projection(r) for r in runs if r.device_check}
    unfinished = [r for r in runs if r.status not in ENDED]
    total = 0.0
    for run in unfinished:
        left = dashboard.eta(run)
        if left is None:
            own = dashboard.device_projection(run)
            left = dashboard.time_left(run, speed, own or checks.get(run.config.get("variant")))
        if left is None:
            return None
        share = (run.steps_per_s or unit) if run.status == "running" else unit
        total += left * share / capacity
    return total if unfinished else None


def sweep_summary(sweep: Sweep, runs: list[Run]) -> dict[str, Any]:
    ablation = (
        None if sweep.ablation_setting is None else {"setting": sweep.ablation_setting, "values": sweep.ablation_values}
    )
    return {
        "id": sweep.id,
        "name": sweep.name,
        "tasks": sweep.tasks,
        "seeds": sweep.seeds,
        "variants": sweep.variants,
        "config": sweep.config,
        "ablation": ablation,
        "created_at": sweep.created_at,
        "cancelled_at": sweep.cancelled_at,
        "progress": progress(runs),
    }


def sweep_detail(session: Session, sweep: Sweep) -> dict[str, Any]:
    runs = sweep_runs(session, stored_id(sweep))
    return {**sweep_summary(sweep, runs), "runs": [run_summary(r) for r in runs]}


def list_sweeps(session: Session) -> list[dict[str, Any]]:
    sweeps = list(session.exec(select(Sweep).order_by(col(Sweep.id).desc())))
    by_sweep: dict[int, list[Run]] = {stored_id(s): [] for s in sweeps}
    for run in session.exec(select(Run).where(col(Run.sweep_id).in_(list(by_sweep)))):
        assert run.sweep_id is not None  # picked by its sweep
        by_sweep[run.sweep_id].append(run)
    return [sweep_summary(s, by_sweep[stored_id(s)]) for s in sweeps]


def cancel_sweep(session: Session, sweep: Sweep) -> dict[str, Any]:
    """Queued runs are cancelled at once, running ones asked through their workers; runs
    that have ended stay as they are (their results still count)."""
    cancelled, asked = [], []
    for run in sweep_runs(session, stored_id(sweep)):
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
    log_event(
        session,
        None,
        "info",
        f"sweep {sweep.name} cancelled: {len(cancelled)} queued runs cancelled, "
        f"{len(asked)} running runs asked to stop",
    )
    return {"cancelled": cancelled, "asked_to_stop": asked}
