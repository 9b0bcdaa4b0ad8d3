"""What the dashboard pages show beyond the run API: progress and score columns of the
run list, the results table, and the series behind the run page's charts."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from app.models import Evaluation, Run
from app.services.metrics import chart_series
from app.services.runs import paper_numbers, run_summary

# The run page's charts and the metric keys each one plots. The loss keys are the ones
# dlite.train.LOSS_KEYS reports (a test keeps them in step; app/ cannot import torch code).
CHARTS: tuple[dict[str, Any], ...] = (
    {"id": "loss", "title": "Diffusion loss (levels 0, 1, 2)", "keys": ("loss0", "loss1", "loss2"),
     "log_y": True, "file": "loss_curve.png"},
    {"id": "invdyn", "title": "Inverse-dynamics loss", "keys": ("invdyn_loss",),
     "log_y": True, "file": "invdyn_loss_curve.png"},
    {"id": "score", "title": "Normalised score", "keys": ("score",),
     "log_y": False, "file": "normalized_score.png"},
)
CHART_KEYS: tuple[str, ...] = tuple(k for c in CHARTS for k in c["keys"])
FIGURE_FILES: tuple[str, ...] = tuple(c["file"] for c in CHARTS)


def chart_data(session: Session, run_id: int, max_points: int) -> dict[str, dict[str, Any]]:
    """Every chart series the run has, downsampled to at most `max_points` each."""
    out = {}
    for key in CHART_KEYS:
        s = chart_series(session, run_id, key, max_points)
        if s["total"]:
            out[key] = s
    return out


def _scores(session: Session, run_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Latest and best evaluation score, and the newest final evaluation, of each run."""
    out: dict[int, dict[str, Any]] = {}
    rows = session.exec(select(Evaluation).where(col(Evaluation.run_id).in_(run_ids))
                        .order_by(col(Evaluation.id)))
    for e in rows:
        s = out.setdefault(e.run_id, {"latest": None, "best": None, "final": None})
        s["latest"] = e.score_mean
        s["best"] = e.score_mean if s["best"] is None else max(s["best"], e.score_mean)
        if e.kind == "final":
            s["final"] = {"mean": e.score_mean, "std": e.score_std, "step": e.step}
    return out


def run_rows(session: Session, runs: list[Run]) -> list[dict[str, Any]]:
    """The run list's rows: summary plus progress, ETA, scores and the paper's number."""
    scores = _scores(session, [r.id for r in runs])
    rows = []
    for run in runs:
        s = scores.get(run.id, {"latest": None, "best": None, "final": None})
        paper = paper_numbers(run.task)["r1"]["mean"]
        left = max(run.total_steps - run.step, 0)
        eta = left / run.steps_per_s if run.status == "running" and run.steps_per_s else None
        shown = s["final"]["mean"] if s["final"] else s["latest"]
        rows.append({**run_summary(run), **s, "paper": paper, "eta_s": eta,
                     "progress": min(run.step / run.total_steps, 1.0) if run.total_steps else 0.0,
                     "difference": None if shown is None or run.is_demo else shown - paper})
    return rows


def results(session: Session, run: Run) -> dict[str, Any]:
    """The run page's results table: the paper's numbers, the final evaluation, the gap.
    A demo run trains on locally made data, so it gets no gap to the paper."""
    final = _scores(session, [run.id]).get(run.id, {}).get("final")
    paper = paper_numbers(run.task)
    comparable = final is not None and not run.is_demo
    return {"task": run.task, "paper": paper["r1"], "seed_readme": paper["seed_readme_r1"], "demo": run.is_demo,
            "mine": final, "difference": final["mean"] - paper["r1"]["mean"] if comparable else None}
