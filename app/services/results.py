"""Results the way the paper reports them: finished runs grouped by task and variant,
the mean over seeds of each run's mean normalised score with its standard error over
seeds, beside the paper's mean ± standard error over 5 seeds.

Every ± carries a label saying what it is. One run has no standard error over seeds:
its ± is the spread over its own episodes, which is not comparable with the paper's
standard error, so no agreement is claimed for it. Demo runs are left out (they train
on locally made data).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from sqlmodel import Session, col, select

from app.models import Evaluation, Run
from app.protocol import plural
from app.services.dashboard import planning_speed
from app.services.runs import evaluation_dict
from dlite.config import schema
from dlite.tasks import PAPER_PLANNING_HZ, PAPER_PLANNING_SOURCE, TASKS

VARIANTS = ("R1", "R2")
SEM_OVER_SEEDS = "mean ± s.e. over seeds"
STD_OVER_EPISODES = "mean ± std over the episodes of one run"
IGNORED_KEYS = frozenset({"seed"} | {f["name"] for f in schema() if f["group"] == "backup"})
"""Config keys that may differ between the runs of one row without making them different experiments."""


def final_evaluations(session: Session, sweep_id: int | None = None) -> list[tuple[Run, Evaluation]]:
    """The newest final evaluation of each (non-demo run, variant)."""
    stmt = (select(Evaluation, Run).join(Run, col(Run.id) == Evaluation.run_id)
            .where(Evaluation.kind == "final", col(Run.is_demo).is_(False)))
    if sweep_id is not None:
        stmt = stmt.where(Run.sweep_id == sweep_id)
    newest: dict[tuple[int, str], tuple[Run, Evaluation]] = {}
    for evaluation, run in session.exec(stmt.order_by(col(Evaluation.id))):
        newest[(run.id, evaluation.variant)] = (run, evaluation)
    return list(newest.values())


def agreement(difference: float, sem: float | None, paper_sem: float | None) -> dict[str, str]:
    """In words, whether a mean over seeds agrees with the paper's, judged by the combined
    standard error sqrt(s.e.² + paper s.e.²)."""
    if sem is None:
        return {"verdict": "not judged", "text": "one seed: no standard error over seeds, so agreement "
                "with the paper is not judged; run more seeds"}
    combined = math.hypot(sem, paper_sem or 0.0)
    side = "above" if difference > 0 else "below"
    if abs(difference) <= combined:
        return {"verdict": "agrees", "text": f"agrees: the difference is within the combined standard error "
                                             f"({combined:.1f})"}
    if abs(difference) <= 2 * combined:
        return {"verdict": "close", "text": f"close: {side} the paper by 1-2 combined standard errors "
                                            f"({combined:.1f})"}
    return {"verdict": "differs", "text": f"differs: {side} the paper by more than twice the combined "
                                          f"standard error ({combined:.1f})"}


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _planning(evaluations: list[Evaluation], variant: str) -> dict[str, Any]:
    """Mean planning frequency of the row's final evaluations, one environment and batched."""
    speeds = [row for e in evaluations for row in planning_speed([evaluation_dict(e)])]
    return {"hz_1env": _mean([s["hz_1env"] for s in speeds if s["hz_1env"]]),
            "decisions_per_s": _mean([s["decisions_per_s"] for s in speeds if s["decisions_per_s"]]),
            "n_envs": sorted({s["n_envs"] for s in speeds if s["decisions_per_s"]}),
            "devices": sorted({s["device"] for s in speeds if s["device"]}),
            "paper_hz": PAPER_PLANNING_HZ.get(variant), "paper_source": PAPER_PLANNING_SOURCE}


def _differing_keys(runs: list[Run]) -> list[str]:
    keys = {k for r in runs for k in r.config} - IGNORED_KEYS - {"variant"}
    return sorted(k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1)


def aggregate(session: Session, sweep_id: int | None = None) -> list[dict[str, Any]]:
    """One row per (task, variant) with a finished run, in the paper's task order."""
    groups: dict[tuple[str, str], list[tuple[Run, Evaluation]]] = {}
    for run, evaluation in final_evaluations(session, sweep_id):
        groups.setdefault((run.task, evaluation.variant), []).append((run, evaluation))
    rows = []
    for task in TASKS:
        for variant in VARIANTS:
            members = sorted(groups.get((task, variant), []), key=lambda m: m[0].id)
            if members:
                rows.append(_row(task, variant, members))
    return rows


def _row(task: str, variant: str, members: list[tuple[Run, Evaluation]]) -> dict[str, Any]:
    scores = [e.score_mean for _, e in members]
    n = len(scores)
    mean = statistics.fmean(scores)
    sem = statistics.stdev(scores) / math.sqrt(n) if n > 1 else None
    paper = TASKS[task].paper_r2 if variant == "R2" else TASKS[task].paper_r1
    difference = mean - paper.mean
    single = members[0][1] if n == 1 else None
    return {
        "task": task, "variant": variant, "n": n,
        "seeds": [r.config.get("seed") for r, _ in members], "run_ids": [r.id for r, _ in members],
        "mean": mean, "sem": sem, "label": SEM_OVER_SEEDS if n > 1 else STD_OVER_EPISODES,
        "per_episode": None if single is None else {
            "mean": single.score_mean, "std": single.score_std, "n_episodes": len(single.scores),
            "label": f"std over the {plural(len(single.scores), 'episode')} of one run (not a standard error)"},
        "paper": {"mean": paper.mean, "sem": paper.sem, "source": paper.source, "label": "mean ± s.e. over 5 seeds"},
        "difference": difference, "agreement": agreement(difference, sem, paper.sem),
        "differing_config_keys": _differing_keys([r for r, _ in members]),
        "planning": _planning([e for _, e in members], variant),
    }


def _pm(mean: float | None, spread: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.1f}" if spread is None else f"{mean:.1f} ± {spread:.1f}"


def _signed(value: float) -> str:
    text = f"{value:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def _hz(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """results.md: the table plus what every ± means and where the paper's numbers come from."""
    lines = ["| task | variant | seeds (n) | mine | paper | difference | agreement "
             "| planning Hz, 1 env | decisions/s, batch | device | paper Hz |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["n"] > 1:
            mine = f"{_pm(r['mean'], r['sem'])} (s.e. over seeds)"
        else:
            ep = r["per_episode"]
            mine = f"{_pm(ep['mean'], ep['std'])} (std over {plural(ep['n_episodes'], 'episode')}, one run)"
        seeds = ", ".join(str(s) for s in r["seeds"])
        p = r["planning"]
        batch = _hz(p["decisions_per_s"]) + (f" ({', '.join(str(n) for n in p['n_envs'])} envs)" if p["n_envs"] else "")
        lines.append(f"| {r['task']} | {r['variant']} | {seeds} ({r['n']}) | {mine} "
                     f"| {_pm(r['paper']['mean'], r['paper']['sem'])} (s.e. over 5 seeds) | {_signed(r['difference'])} "
                     f"| {r['agreement']['text']} | {_hz(p['hz_1env'])} | {batch} "
                     f"| {', '.join(p['devices']) or '–'} | {_hz(p['paper_hz'])} |")
    sources = sorted({r["paper"]["source"] for r in rows})
    lines += ["", "D4RL normalised score. mine: each run's final evaluation (mean over its episodes), then the mean "
              "and standard error (s.e.) over runs of different seeds; a single run shows the standard deviation "
              "over its episodes instead, which is not comparable with the paper's standard error.",
              "Agreement: the difference within the combined standard error sqrt(s.e.² + paper s.e.²).",
              "Planning frequency: decisions per second, 1000 / latency of one planning call for one environment; "
              "batch: one call plans for all evaluation environments at once.",
              *(f"Paper scores: {s}." for s in sources), f"Paper Hz: {PAPER_PLANNING_SOURCE}."]
    return "\n".join(lines) + "\n"
