"""What the dashboard pages show beyond the run API: progress and score columns of the
run list, the results table, and the series behind the run page's charts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, get_args, overload

from sqlmodel import Session, col, select

from app.models import ConsoleLine, Evaluation, Event, Run, Worker, stored_id
from app.protocol import Stage
from app.services import waiting
from app.services.events import now
from app.services.metrics import chart_series
from app.services.paper_settings import departures, not_the_papers, speed_caption
from app.services.runs import paper_numbers, run_summary
from dlite.config import ConfigError, from_dict, level_loss_keys, schema
from dlite.tasks import PAPER_PLANNING_HZ, PAPER_PLANNING_SOURCE

# The run page's charts and the metric keys each one plots. The loss keys are the ones
# dlite.train reports (dlite.config.level_loss_keys, one per plan level, so `charts` builds
# the loss chart for a run's number of levels), `lr` and `steps_per_s` the worker's training
# log (a test keeps them in step; app/ cannot import torch code). `smooth`:
# the smoothing slider applies (noisy measurements, not a schedule or sparse evaluations);
# `file`: the PNG figure written; `y_title`: the y axis's title, with its unit.
LOSS_CHART: dict[str, Any] = {
    "id": "loss",
    "log_y": True,
    "smooth": True,
    "file": "loss_curve.png",
    "y_title": "flow MSE (normalised units)",
}
OTHER_CHARTS: tuple[dict[str, Any], ...] = (
    {
        "id": "invdyn",
        "title": "Inverse-dynamics loss",
        "keys": ("invdyn_loss",),
        "log_y": True,
        "smooth": True,
        "file": "invdyn_loss_curve.png",
        "y_title": "action MSE ([−1, 1] actions)",
    },
    {
        "id": "score",
        "title": "Normalised score",
        "keys": ("score",),
        "log_y": False,
        "smooth": False,
        "file": "normalized_score.png",
        "y_title": "D4RL score (100 = expert)",
    },
    {
        "id": "lr",
        "title": "Learning rate",
        "keys": ("lr",),
        "log_y": False,  # a cosine schedule's end is 0: on a log axis it dives off the chart
        "smooth": False,
        "file": None,
        "y_title": "learning rate (per step)",
    },
    {
        "id": "speed",
        "title": "Training speed (steps/s)",
        "keys": ("steps_per_s",),
        "log_y": False,
        "smooth": True,
        "file": None,
        "y_title": "training steps/s",
    },
)
CHART_IDS: tuple[str, ...] = (LOSS_CHART["id"], *(c["id"] for c in OTHER_CHARTS))
FIGURE_FILES: tuple[str, ...] = tuple(c["file"] for c in (LOSS_CHART, *OTHER_CHARTS) if c["file"])


def levels(configs: Iterable[dict[str, Any]]) -> int:
    """The most plan levels of these run configs: their loss chart has one series per level."""
    return max(len(c["horizons"]) for c in configs)


def charts(n_levels: int) -> tuple[dict[str, Any], ...]:
    """The run page's charts for runs of `n_levels` plan levels."""
    loss = {
        **LOSS_CHART,
        "keys": level_loss_keys(n_levels),
        "title": f"Diffusion loss (levels {', '.join(map(str, range(n_levels)))})",
    }
    return (loss, *OTHER_CHARTS)


def chart_data(session: Session, run: Run, max_points: int) -> dict[str, dict[str, Any]]:
    """Every chart series the run has, downsampled to at most `max_points` each, with its
    non-finite points (never downsampled; a series may have only those)."""
    out = {}
    for key in (k for c in charts(levels([run.config])) for k in c["keys"]):
        s = chart_series(session, stored_id(run), key, max_points)
        if s["total"] or s["nonfinite"]["steps"]:
            out[key] = s
    return out


def _scores(session: Session, run_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The newest final evaluation of each run (`final` is R1's, what the paper's R1 number
    compares with; `final_r2` an R2 run's R2 one), and its latest and best quick evaluations:
    a quick one has a few episodes, so its maximum is the luckiest draw, never the result."""
    out: dict[int, dict[str, Any]] = {}
    rows = session.exec(select(Evaluation).where(col(Evaluation.run_id).in_(run_ids)).order_by(col(Evaluation.id)))
    for e in rows:
        s = out.setdefault(e.run_id, _no_scores())
        if e.kind == "final":
            s["final" if e.variant == "R1" else "final_r2"] = {
                "mean": e.score_mean,
                "std": e.score_std,
                "step": e.step,
                "n_episodes": len(e.scores),
            }
        else:
            s["latest_quick"] = e.score_mean
            s["best_quick"] = e.score_mean if s["best_quick"] is None else max(s["best_quick"], e.score_mean)
    return out


def _no_scores() -> dict[str, Any]:
    """A run without any evaluation yet."""
    return {"latest_quick": None, "best_quick": None, "final": None, "final_r2": None}


def run_rows(session: Session, runs: list[Run]) -> list[dict[str, Any]]:
    """The run list's rows: summary plus progress, ETA, scores and the paper's number; the
    difference to the paper is the final evaluation's, and only at the paper's settings (a
    demo has none: it trains on locally made data)."""
    scores = _scores(session, [stored_id(r) for r in runs])
    rows = []
    for run in runs:
        s = scores.get(stored_id(run), _no_scores())
        paper = paper_numbers(run.task)["r1"]["mean"]
        final = s["final"]["mean"] if s["final"] else None
        caption = not_the_papers(departures(run.config, "R1"))
        rows.append(
            {
                **run_summary(run),
                **s,
                "final_score": final,
                "paper": paper,
                "eta_s": eta(run),
                "progress": min(run.step / run.total_steps, 1.0) if run.total_steps else 0.0,
                "settings_caption": caption,
                "difference": None if final is None or run.is_demo or caption else final - paper,
            }
        )
    return rows


def results(session: Session, run: Run) -> dict[str, Any]:
    """The run page's results table: the paper's numbers, the final evaluation, and the gap
    when the run used the paper's settings (else `settings_caption` says what it changed). A
    demo run trains on locally made data, so it gets no gap to the paper either."""
    assert run.id is not None  # a stored run
    scores = _scores(session, [run.id]).get(run.id, {})
    final, final_r2 = scores.get("final"), scores.get("final_r2")
    paper = paper_numbers(run.task)
    caption = not_the_papers(departures(run.config, "R1"))
    r2_caption = not_the_papers(departures(run.config, "R2"))
    r2 = (
        None
        if final_r2 is None
        else {
            "paper": paper["r2"],
            "mine": final_r2,
            "settings_caption": r2_caption,
            "difference": None if run.is_demo or r2_caption else final_r2["mean"] - paper["r2"]["mean"],
        }
    )
    comparable = not run.is_demo and caption is None
    return {
        "task": run.task,
        "paper": paper["r1"],
        "seed_readme": paper["seed_readme_r1"],
        "demo": run.is_demo,
        "mine": final,
        "settings_caption": caption,
        "difference": final["mean"] - paper["r1"]["mean"] if final is not None and comparable else None,
        "r2": r2,
    }


STAGE_ORDER: tuple[str, ...] = get_args(Stage)
"""The stages in the order a run passes them."""


def eta(run: Run) -> float | None:
    """Seconds left of a running run (others have no clock running), at its own measured speed
    and device check (`time_left`): what its page and the run list show."""
    if run.status != "running":
        return None
    return time_left(run, run.steps_per_s, device_projection(run))


def device_projection(run: Run) -> dict[str, Any] | None:
    """What the run's device check projects for the whole run; None before the check ran."""
    return run.device_check["projection"] if run.device_check else None


def time_left(run: Run, steps_per_s: float | None, projection: dict[str, Any] | None) -> float | None:
    """Seconds the rest of `run` takes: training at `steps_per_s` when one is measured, else
    (until a heartbeat brings one) at the device check's projected rate, so a run has an ETA
    from step 0; plus what the check projects for the rest: R2's pairs and the evaluations'
    planning. The speed and projection are parameters so a sweep can price a queued run by
    what its siblings measured. None when neither is known."""
    if steps_per_s:
        training = max(run.total_steps - run.step, 0) / steps_per_s
        return training + (_besides_training(run, projection) if projection else 0.0)
    return None if projection is None else _projected_eta(run, projection)


def _stage_at(run: Run) -> int:
    """Where the run is in the stages' order (before the first when it has no stage yet)."""
    return STAGE_ORDER.index(run.stage) if run.stage in STAGE_ORDER else 0


def _besides_training(run: Run, projection: dict[str, Any]) -> float:
    """The evaluations' planning still ahead (the quick ones in proportion to the steps left,
    the final one, which a running run has not finished) and, for an R2 run that has not made
    them yet, its pairs. A report without the split (older workers) counts it all as final."""
    share = max(run.total_steps - run.step, 0) / run.total_steps if run.total_steps else 0.0
    split = projection.get("final_eval_s") is not None
    quick = (projection.get("quick_eval_s") or 0.0) if split else 0.0
    final = projection["final_eval_s"] if split else projection["eval_s"]
    r2_before_pairs = run.config.get("variant") == "R2" and _stage_at(run) <= STAGE_ORDER.index("reflow_pairs")
    return quick * share + final + (projection["reflow_pairs_s"] if r2_before_pairs else 0.0)


def _projected_eta(run: Run, projection: dict[str, Any]) -> float:
    """The training steps left at the projection's time per step, reflow's at its own (R2's
    `total_steps` counts them, `reflow_s` prices them all), and the rest (`_besides_training`)."""
    reflow_steps = run.config["reflow_gradient_steps"] if run.config.get("variant") == "R2" else 0
    steps_left = max(run.total_steps - reflow_steps - run.step, 0)
    per_step = projection["train_s"] / projection["train_steps"] if projection["train_steps"] else 0.0
    reflow_left = min(max(run.total_steps - run.step, 0), reflow_steps)  # reflow's steps come last
    reflow = projection["reflow_s"] * reflow_left / reflow_steps if reflow_steps else 0.0
    return steps_left * per_step + reflow + _besides_training(run, projection)


def run_facts(session: Session, run: Run, lease_seconds: float) -> dict[str, Any]:
    """The run page's summary line: where it runs, for how long, and how long is left; a
    queued run's place in the queue, and a run whose worker went silent, whose clock stops
    at the last heartbeat (waiting: the lease decides when it is queued again). A run that
    ended before it trained gets no duration: "took 4 s" for a run that failed fetching its
    data would read as a run that was quick, not one that never ran."""
    worker = session.get(Worker, run.worker_id) if run.worker_id else None
    lost = waiting.worker_lost(run.status, run.lease_expires_at, lease_seconds)
    end = run.finished_at if run.finished_at is not None else lost["last_heartbeat"] if lost else now()
    started = None if run.finished_at is not None and not _trained(run) else run.started_at
    return {
        "device": worker.device if worker else None,
        "gpu_name": worker.gpu_name if worker else None,
        "worker_name": worker.name if worker else None,
        "elapsed_s": None if started is None else max(end - started, 0.0),
        "eta_s": None if lost else eta(run),
        "worker_lost": lost,
        "queue": waiting.queue_place(session, run, lease_seconds),
    }


def _trained(run: Run) -> bool:
    """Whether the run reached training in some attempt (a resumed one restarts at `data`
    with its steps kept)."""
    return run.step > 0 or _stage_at(run) >= STAGE_ORDER.index("train")


def device_label(facts: dict[str, Any]) -> str | None:
    """'cuda (Tesla T4)', 'cpu', or None when the run has no worker yet."""
    if not facts["device"]:
        return None
    return f"{facts['device']} ({facts['gpu_name']})" if facts["gpu_name"] else facts["device"]


def planning_speed(
    evaluations: list[dict[str, Any]], config: dict[str, Any], worker_device: str | None = None
) -> list[dict[str, Any]]:
    """The newest timed evaluation of each variant: planning latency, decisions per second
    (one call plans for all `n_envs` environments, so a batch makes n_envs decisions), and
    the single-environment frequency next to the paper's, with what makes the run's planner
    (`config`) another one than the paper's (`not_comparable`). An evaluation that did not
    name its device was measured on the run's worker (`worker_device`)."""
    newest: dict[str, dict[str, Any]] = {}
    for e in evaluations:
        if e.get("latency_ms") or e.get("latency_ms_1env"):
            newest[e.get("variant") or "R1"] = e
    rows = []
    for variant, e in sorted(newest.items()):
        batch, single = e.get("latency_ms"), e.get("latency_ms_1env")
        device = e.get("device") or worker_device
        rows.append(
            {
                "variant": variant,
                "step": e["step"],
                "kind": e["kind"],
                "device": device,
                "n_envs": e["n_envs"],
                "latency_ms": batch,
                "decisions_per_s": e["n_envs"] * 1000.0 / batch if batch else None,
                "latency_ms_1env": single,
                "hz_1env": 1000.0 / single if single else None,
                "paper_hz": PAPER_PLANNING_HZ.get(variant),
                "paper_source": PAPER_PLANNING_SOURCE,
                "not_comparable": speed_caption(config, variant, devices=[device] if device else []),
            }
        )
    return rows


@overload
def device_check(report: dict[str, Any]) -> dict[str, Any]: ...
@overload
def device_check(report: None) -> None: ...
def device_check(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The device check as the run page and results.md show it: each path marked `used` when
    the run goes on with it, and a planning path's speed also as a frequency (1000 / ms for
    one environment), the unit the paper reports. `used` maps a stage to its path."""
    if report is None:
        return None
    paths = [
        {
            **p,
            "used": report["chosen"].get(p["stage"]) == p["name"],
            "hz": 1000.0 / p["ms"] if p["stage"] == "plan" and p["ms"] else None,
        }
        for p in report["paths"]
    ]
    return {**report, "paths": paths, "used": {p["stage"]: p for p in paths if p["used"]}}


def param_rows(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The run page's hyper-parameters: each value, whether it differs from the default (and
    the default), and for a setting left to the task table the value the run uses."""
    fields = {f["name"]: f for f in schema()}
    try:
        resolved = from_dict(config).resolved
    except ConfigError:  # a config from an older version: shown as stored
        resolved = {}
    rows = []
    for name, value in config.items():
        field = fields.get(name)
        default = field["default"] if field else None
        rows.append(
            {
                "name": name,
                "value": value,
                "help": field["help"] if field else "",
                "differs": field is not None and value != default,
                "default": default,
                "resolved": resolved.get(name) if value is None else None,
            }
        )
    return rows


def fold(message: str) -> dict[str, str | None]:
    """A multi-line message (a traceback) is shown folded under its telling line, the
    exception for a traceback, and unfolds with its line breaks; one line stays as it is."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) < 2:
        return {"summary": None, "body": None}
    summary = lines[-1] if "Traceback (most recent call last)" in message else lines[0]
    return {"summary": summary, "body": message.strip("\n")}


def event_rows(events: list[Event]) -> list[dict[str, Any]]:
    """Log lines for the page, folded (`fold`)."""
    return [{"ts": e.ts, "level": e.level, "message": e.message, **fold(e.message)} for e in events]


def console_rows(lines: list[ConsoleLine]) -> list[dict[str, Any]]:
    """The run's console for the page and the API, folded like the event log (`fold`)."""
    return [
        {"id": c.id, "ts": c.ts, "attempt": c.attempt, "level": c.level, "text": c.text, **fold(c.text)} for c in lines
    ]
