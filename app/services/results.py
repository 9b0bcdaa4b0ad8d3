"""Results the way the paper reports them: finished runs grouped by task, variant and the
settings that change the result (app.services.paper_settings' fingerprint), the mean over
seeds of each run's mean normalised score with its standard error over seeds, beside the
paper's mean ± standard error over 5 seeds; and an ablation sweep's runs grouped by the
value of the setting it varies, beside the paper's ablation numbers. Only a group at the
paper's settings is compared with the paper; any other says what it changed instead.

Every ± carries a label saying what it is. One run has no standard error over seeds:
its ± is the spread over its own episodes, which is not comparable with the paper's
standard error, so no agreement is claimed for it. Demo runs are left out (they train
on locally made data), and so are ablation runs from the main table: their settings differ
on purpose, so they are shown in their ablation's view instead.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from sqlmodel import Session, col, select

from app.models import Evaluation, Run, Sweep, stored_id
from app.protocol import plural
from app.services.compare import MAX_COMPARED
from app.services.dashboard import device_check, planning_speed
from app.services.paper_settings import departures, fingerprint, fingerprint_key, not_the_papers, speed_caption
from app.services.runs import evaluation_dict, run_label
from dlite.tasks import (
    ABLATION_SOURCE,
    ABLATION_VARIANT,
    PAPER_PLANNING_HZ,
    PAPER_PLANNING_SOURCE,
    TASKS,
    PaperScore,
    paper_ablation_score,
)

VARIANTS = ("R1", "R2")
SEM_OVER_SEEDS = "mean ± s.e. over seeds"
STD_OVER_EPISODES = "mean ± std over the episodes of one run"
PAPER_LABEL = "mean ± s.e. over 5 seeds"


def final_evaluations(session: Session, sweep_id: int | None = None) -> list[tuple[Run, Evaluation]]:
    """The newest final evaluation of each (non-demo run, variant)."""
    stmt = (
        select(Evaluation, Run)
        .join(Run, col(Run.id) == Evaluation.run_id)
        .where(Evaluation.kind == "final", col(Run.is_demo).is_(False))
    )
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
        return {
            "verdict": "not judged",
            "text": "one seed: no standard error over seeds, so agreement with the paper is not judged; run more seeds",
        }
    combined = math.hypot(sem, paper_sem or 0.0)
    side = "above" if difference > 0 else "below"
    if abs(difference) <= combined:
        return {
            "verdict": "agrees",
            "text": f"agrees: the difference is within the combined standard error ({combined:.1f})",
        }
    if abs(difference) <= 2 * combined:
        return {"verdict": "close", "text": f"close: {side} the paper by 1-2 combined standard errors ({combined:.1f})"}
    return {
        "verdict": "differs",
        "text": f"differs: {side} the paper by more than twice the combined standard error ({combined:.1f})",
    }


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _sem(values: list[float]) -> float | None:
    """Standard error of the mean; None below two values."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def _planning(evaluations: list[Evaluation], variant: str, config: dict[str, Any]) -> dict[str, Any]:
    """Mean planning frequency of the row's final evaluations, one environment (with its
    standard error over the runs) and batched; the paper's frequency comes with what makes
    these another measurement (`not_comparable`: the model or its sampling steps, a device
    that is no CUDA GPU); the batch is never the paper's (it planned one environment)."""
    speeds = [row for e in evaluations for row in planning_speed([evaluation_dict(e)], config)]
    hz = [s["hz_1env"] for s in speeds if s["hz_1env"]]
    n_envs = sorted({s["n_envs"] for s in speeds if s["decisions_per_s"]})
    devices = sorted({s["device"] for s in speeds if s["device"]})
    return {
        "hz_1env": _mean(hz),
        "hz_1env_sem": _sem(hz),
        "decisions_per_s": _mean([s["decisions_per_s"] for s in speeds if s["decisions_per_s"]]),
        "n_envs": n_envs,
        "devices": devices,
        "paper_hz": PAPER_PLANNING_HZ.get(variant),
        "paper_source": PAPER_PLANNING_SOURCE,
        "not_comparable": speed_caption(config, variant, devices=devices),
    }


def _differing_keys(runs: list[Run], variant: str) -> list[str]:
    """Settings that change the result yet differ between the runs of one row (only an
    ablation's rows, grouped by one value, can have any)."""
    prints = [fingerprint(r.config, variant) for r in runs]
    keys = {k for p in prints for k in p}
    return sorted(k for k in keys if len({repr(p.get(k)) for p in prints}) > 1)


def _ablation_sweeps(session: Session, sweep_id: int | None = None) -> list[Sweep]:
    stmt = select(Sweep).where(col(Sweep.ablation_setting).is_not(None))
    if sweep_id is not None:
        stmt = stmt.where(Sweep.id == sweep_id)
    return list(session.exec(stmt.order_by(col(Sweep.id).desc())))


def aggregate(session: Session, sweep_id: int | None = None) -> list[dict[str, Any]]:
    """One row per task, variant and fingerprint with a finished run, in the paper's task order,
    the paper's settings first; runs of ablation sweeps are left out (see `ablations`)."""
    ablation_ids = {s.id for s in _ablation_sweeps(session)}
    groups: dict[tuple[str, str, str], list[tuple[Run, Evaluation]]] = {}
    for run, evaluation in final_evaluations(session, sweep_id):
        if run.sweep_id not in ablation_ids:
            key = (run.task, evaluation.variant, fingerprint_key(run.config, evaluation.variant))
            groups.setdefault(key, []).append((run, evaluation))
    rows = []
    for (task, variant, _), members in groups.items():
        members.sort(key=lambda m: stored_id(m[0]))
        paper = TASKS[task].paper_r2 if variant == "R2" else TASKS[task].paper_r1
        rows.append(
            {"task": task, "variant": variant, **_stats(members, variant, paper, variant, members[0][0].config)}
        )
    order = {task: i for i, task in enumerate(TASKS)}
    return sorted(
        rows, key=lambda r: (order[r["task"]], VARIANTS.index(r["variant"]), not r["paper_settings"], r["run_ids"][0])
    )


def _stats(
    members: list[tuple[Run, Evaluation]],
    variant: str,
    paper: PaperScore | None,
    paper_variant: str,
    config: dict[str, Any],
    varied: str | None = None,
) -> dict[str, Any]:
    """Mean ± s.e. over seeds of the members' final scores beside the paper's score (of
    `paper_variant`, which the labels name), and whether they agree: judged only when the
    members' `config` is the paper's but for the setting an ablation `varied`. No members (an
    ablation value whose runs have not finished) gives no numbers, only the paper's."""
    changed = departures(config, variant, ignore=frozenset({varied} if varied else ()))
    scores = [e.score_mean for _, e in members]
    n = len(scores)
    mean, sem = _mean(scores), _sem(scores)
    single = members[0][1] if n == 1 else None
    caption = not_the_papers(changed)
    difference = None if mean is None or paper is None or caption else mean - paper.mean
    if caption and n:
        judged = {"verdict": "not compared", "text": f"{caption}; no agreement or difference is claimed"}
    elif difference is None:
        judged = {
            "verdict": "not judged",
            "text": "no finished run yet" if n == 0 else "the paper has no score for this value",
        }
    else:
        assert paper is not None  # a difference needs the paper's score
        judged = agreement(difference, sem, paper.sem)
    return {
        "n": n,
        "seeds": [r.config.get("seed") for r, _ in members],
        "run_ids": [r.id for r, _ in members],
        "mean": mean,
        "sem": sem,
        "label": None if n == 0 else SEM_OVER_SEEDS if n > 1 else STD_OVER_EPISODES,
        "per_episode": None
        if single is None
        else {
            "mean": single.score_mean,
            "std": single.score_std,
            "n_episodes": len(single.scores),
            "label": f"std over the {plural(len(single.scores), 'episode')} of one run (not a standard error)",
        },
        "paper": None
        if paper is None
        else {
            "mean": paper.mean,
            "sem": paper.sem,
            "source": paper.source,
            "label": PAPER_LABEL,
            "variant": paper_variant,
        },
        "paper_settings": not changed,
        "departures": changed,
        "settings_caption": caption,
        "difference": difference,
        "agreement": judged,
        "differing_config_keys": _differing_keys([r for r, _ in members], variant),
        "planning": _planning([e for _, e in members], variant, config),
    }


def ablations(session: Session, sweep_id: int | None = None) -> list[dict[str, Any]]:
    """The view of every ablation sweep (only `sweep_id`'s when given), newest first."""
    return [_ablation_view(session, s) for s in _ablation_sweeps(session, sweep_id)]


def _ablation_view(session: Session, sweep: Sweep) -> dict[str, Any]:
    """An ablation sweep's final scores grouped by the value of the setting it varies: a row
    per value and variant (R2 runs evaluate R1 too), with the paper's score of that value
    where its ablations have one. Those are Lite-D's (see dlite.tasks.ABLATION_VARIANT), so
    the view says so next to every agreement. `compare_run_ids` picks up to MAX_COMPARED runs,
    as many of each value as fit, for the comparison page coloured by the setting."""
    [task], setting = sweep.tasks, sweep.ablation_setting
    assert setting is not None and sweep.ablation_values is not None  # _ablation_sweeps picks ablations only
    groups: dict[tuple[str, str], list[tuple[Run, Evaluation]]] = {}
    for run, evaluation in final_evaluations(session, sweep.id):
        groups.setdefault((repr(run.config.get(setting)), evaluation.variant), []).append((run, evaluation))
    variants = VARIANTS if "R2" in sweep.variants else ("R1",)
    rows = []
    for value in sweep.ablation_values:
        paper = paper_ablation_score(task, setting, value)
        planned = {**sweep.config, "task": task, setting: value}
        for variant in variants:
            members = sorted(groups.get((repr(value), variant), []), key=lambda m: stored_id(m[0]))
            config = members[0][0].config if members else planned
            rows.append(
                {
                    "value": value,
                    "value_text": str(value),
                    "variant": variant,
                    **_stats(members, variant, paper, ABLATION_VARIANT, config, setting),
                }
            )
    runs = list(session.exec(select(Run).where(Run.sweep_id == sweep.id).order_by(col(Run.id))))
    per_value = max(MAX_COMPARED // max(len(sweep.ablation_values), 1), 1)
    picked = [
        r.id for value in sweep.ablation_values for r in [r for r in runs if r.config.get(setting) == value][:per_value]
    ][:MAX_COMPARED]
    with_paper = any(r["paper"] for r in rows)
    return {
        "sweep_id": sweep.id,
        "sweep_name": sweep.name,
        "task": task,
        "setting": setting,
        "values": sweep.ablation_values,
        "variants": list(variants),
        "rows": rows,
        "paper_variant": ABLATION_VARIANT if with_paper else None,
        "paper_source": ABLATION_SOURCE if with_paper else None,
        "caveat": None
        if not with_paper
        else (
            f"The paper's numbers are {ABLATION_VARIANT}'s (DiffuserLite-D, DDIM sampling, no public code); this "
            f"lab runs {' and '.join(variants)}, so the agreement compares different variants."
        ),
        "compare_run_ids": picked,
    }


def devices(session: Session, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The device check of each run counted in `rows` that has one, oldest run first, so a
    reader of the table sees what each run trained and planned on. An R2 run counts in its
    R1 row too; it is listed once."""
    ids = sorted({i for r in rows for i in r["run_ids"]})
    runs = session.exec(select(Run).where(col(Run.id).in_(ids)).order_by(col(Run.id)))
    return [{"run_id": r.id, "label": run_label(r), **device_check(r.device_check)} for r in runs if r.device_check]


def _devices_markdown(checks: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Devices",
        "",
        "| run | device | training path | ms per step | planning path | Hz, 1 env | projected total |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in checks:
        train, plan = c["used"].get("train"), c["used"].get("plan")
        step_ms = "–" if train is None or train["ms"] is None else f"{train['ms']:,.2f}"
        lines.append(
            f"| #{c['run_id']} {c['label']} | {c['device_name']} ({c['device']}) "
            f"| {c['chosen'].get('train', '–')} | {step_ms} | {c['chosen'].get('plan', '–')} "
            f"| {_hz(None if plan is None else plan['hz'])} | {c['projection']['total_s'] / 3600:,.1f} h |"
        )
    lines += [
        "",
        "Each run's device check: the paths it verified against the reference and the run used, their "
        "median ms per training step and planning decisions per second for one environment, and the whole "
        "run (training, reflow, the evaluations' planning) projected at those rates.",
    ]
    return lines


def _pm(mean: float | None, spread: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.1f}" if spread is None else f"{mean:.1f} ± {spread:.1f}"


def _signed(value: float) -> str:
    text = f"{value:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def _difference(r: dict[str, Any]) -> str:
    return "–" if r["difference"] is None else _signed(r["difference"])


def _paper_hz(planning: dict[str, Any]) -> str:
    """The paper's frequency, and when this row's planner is another one, which."""
    hz = _hz(planning["paper_hz"])
    return hz if planning["not_comparable"] is None else f"{hz} (not comparable: {planning['not_comparable']})"


def _hz(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def _mine(r: dict[str, Any]) -> str:
    """A row's own score in words: mean ± s.e. over seeds, or one run's spread over episodes."""
    if r["n"] > 1:
        return f"{_pm(r['mean'], r['sem'])} (s.e. over seeds)"
    if r["n"] == 0:
        return "– (no finished run yet)"
    ep = r["per_episode"]
    return f"{_pm(ep['mean'], ep['std'])} (std over {plural(ep['n_episodes'], 'episode')}, one run)"


def _ablation_markdown(view: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## Ablation: {view['setting']} on {view['task']} (sweep {view['sweep_name']})",
        "",
        f"| {view['setting']} | variant | seeds (n) | mine | paper ({ABLATION_VARIANT}) | difference | agreement "
        "| planning Hz, 1 env |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in view["rows"]:
        paper = "–" if r["paper"] is None else f"{_pm(r['paper']['mean'], r['paper']['sem'])} (s.e. over 5 seeds)"
        p = r["planning"]
        lines.append(
            f"| {r['value_text']} | {r['variant']} | {', '.join(map(str, r['seeds']))} ({r['n']}) "
            f"| {_mine(r)} | {paper} | {_difference(r)} "
            f"| {r['agreement']['text']} | {_pm(p['hz_1env'], p['hz_1env_sem'])} |"
        )
    if view["caveat"]:
        lines += ["", f"{view['caveat']} Paper scores: {view['paper_source']}."]
    return lines


def markdown(rows: list[dict[str, Any]], ablation_views: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    """results.md: the table plus what every ± means and where the paper's numbers come from,
    then each ablation's table, then the devices the table's runs were checked on (`devices`)."""
    lines = [
        "| task | variant | seeds (n) | mine | paper | difference | agreement "
        "| planning Hz, 1 env | decisions/s, batch | device | paper Hz |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        mine = _mine(r)
        seeds = ", ".join(str(s) for s in r["seeds"])
        p = r["planning"]
        batch = _hz(p["decisions_per_s"]) + (f" ({', '.join(str(n) for n in p['n_envs'])} envs)" if p["n_envs"] else "")
        lines.append(
            f"| {r['task']} | {r['variant']} | {seeds} ({r['n']}) | {mine} "
            f"| {_pm(r['paper']['mean'], r['paper']['sem'])} (s.e. over 5 seeds) | {_difference(r)} "
            f"| {r['agreement']['text']} | {_hz(p['hz_1env'])} | {batch} "
            f"| {', '.join(p['devices']) or '–'} | {_paper_hz(p)} |"
        )
    sources = sorted({r["paper"]["source"] for r in rows})
    lines += [
        "",
        "D4RL normalised score. mine: each run's final evaluation (mean over its episodes), then the mean "
        "and standard error (s.e.) over runs of different seeds; a single run shows the standard deviation "
        "over its episodes instead, which is not comparable with the paper's standard error.",
        "Agreement: the difference within the combined standard error sqrt(s.e.² + paper s.e.²), judged only "
        "for runs at the paper's settings; a row at other settings names them and is not compared.",
        "Planning frequency: decisions per second, 1000 / latency of one planning call for one environment; "
        "batch: one call plans for all evaluation environments at once.",
        *(f"Paper scores: {s}." for s in sources),
        f"Paper Hz: {PAPER_PLANNING_SOURCE}.",
    ]
    for view in ablation_views:
        lines += _ablation_markdown(view)
    if checks:
        lines += _devices_markdown(checks)
    return "\n".join(lines) + "\n"
