"""Runs side by side, and every chart's data as a table (CSV or JSON).

A chart's table holds what the chart draws: metric charts the downsampled series of each
run (columns run, key, step, value, wall time); the score chart each run's evaluations
(quick or final, R1 or R2, with their spread over episodes) and, for a task that has
one, the published reference curve. A run's whole metric history is runs.metric_history.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from sqlmodel import Session

from app.models import Run, stored_id
from app.protocol import MAX_INT
from app.services import NotFound
from app.services.dashboard import CHART_IDS, charts, levels
from app.services.metrics import chart_series
from app.services.paper_settings import NEUTRAL, fingerprint_key
from app.services.runs import evaluations, get_run, run_summary
from app.services.stage_marks import stage_marks
from dlite.tasks import REFERENCE_CURVES

MAX_COMPARED = 12
SCORE = {"id": "score", "title": "Normalised score (evaluations)", "y_title": "D4RL score (100 = expert)"}
COMPARED = ("loss", "invdyn", SCORE["id"])
"""The charts of the comparison page."""
METRIC_COLUMNS = ["run_id", "run", "key", "step", "value", "wall_time"]
SCORE_COLUMNS = ["run_id", "run", "kind", "variant", "step", "score_mean", "score_std", "n_episodes", "source"]


RUN_ID = rf"0*(?:[1-9][0-9]{{0,{len(str(MAX_INT)) - 2}}}|{MAX_INT})"
"""A run id the API takes, 1 to MAX_INT (a power of ten), in ASCII digits."""
IDS_PATTERN = rf"^ *{RUN_ID} *(?:, *{RUN_ID} *){{0,{MAX_COMPARED - 1}}}$"
"""What `parse_ids` takes, as the JSON Schema pattern of the `runs` parameter."""
_ID = re.compile(rf" *{RUN_ID} *")


def parse_ids(text: str) -> list[int]:
    """`1,2,3` into run ids, in order, without repeats; a bad list raises ValueError saying why."""
    parts = text.split(",")
    for part in parts:
        if not _ID.fullmatch(part):
            raise ValueError(f"{part.strip()!r} is not a run id; give run ids separated by commas, e.g. runs=3,7")
    if len(parts) > MAX_COMPARED:
        raise ValueError(f"compare 1 to {MAX_COMPARED} runs at a time ({len(parts)} given)")
    return list(dict.fromkeys(int(p) for p in parts))


def get_runs(session: Session, ids: list[int]) -> list[Run]:
    return [get_run(session, i) for i in ids]


def label(run: Run) -> str:
    return f"#{run.id} {run.name or run.task}"


def setting(run: Run, key: str) -> Any:
    """The run's value of a config key, or its task."""
    return run.task if key == "task" else run.config.get(key)


def config_diff(runs: list[Run]) -> list[dict[str, Any]]:
    """The config keys (and task) whose values are not the same in every run."""
    keys = ["task", *sorted({k for r in runs for k in r.config} - {"task"})]
    values = {k: [setting(r, k) for r in runs] for k in keys}
    return [{"key": k, "values": v} for k, v in values.items() if len({repr(x) for x in v}) > 1]


def colour_indices(runs: list[Run], key: str | None) -> list[int]:
    """Each run's colour: its own (key None), or one per value of `key`, so the runs of an
    ablation that share a value (several seeds) share a colour."""
    if key is None:
        return list(range(len(runs)))
    values = list(dict.fromkeys(repr(setting(r, key)) for r in runs))
    return [values.index(repr(setting(r, key))) for r in runs]


def chart_table(session: Session, runs: list[Run], chart_id: str, max_points: int) -> dict[str, Any]:
    """One chart's data for these runs: title, columns and rows."""
    if chart_id == SCORE["id"]:
        rows = [
            [r.id, label(r), e.kind, e.variant, e.step, e.score_mean, e.score_std, len(e.scores), "this lab"]
            for r in runs
            for e in evaluations(session, stored_id(r))
        ]
        for task in dict.fromkeys(r.task for r in runs if not r.is_demo):  # demo data is not D4RL's
            curve = REFERENCE_CURVES.get(task)
            if curve is not None:
                rows += [
                    [None, f"reference: {task}", "reference", curve.variant, step, score, None, None, curve.source]
                    for step, score in zip(curve.steps, curve.scores)
                ]
        return {
            "chart": SCORE["id"],
            "title": SCORE["title"],
            "columns": SCORE_COLUMNS,
            "rows": rows,
            "y_title": SCORE["y_title"],
        }
    if chart_id not in CHART_IDS:
        raise NotFound(f"no chart {chart_id!r}; the charts are {', '.join(CHART_IDS)}")
    chart = _metric_charts(runs)[chart_id]
    rows = []
    for run in runs:
        for key in chart["keys"]:
            s = chart_series(session, stored_id(run), key, max_points)
            rows += [
                [run.id, label(run), key, step, value, wall]
                for step, value, wall in zip(s["steps"], s["values"], s["wall_times"])
            ]
    return {
        "chart": chart_id,
        "title": chart["title"],
        "columns": METRIC_COLUMNS,
        "rows": rows,
        "log_y": chart["log_y"],
        "y_title": chart["y_title"],
    }


def _metric_charts(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """The metric charts for these runs: the loss chart has a series per level of the run
    with the most levels (a run with fewer simply has no series for the others)."""
    return {c["id"]: c for c in charts(levels(r.config for r in runs)) if c["id"] != SCORE["id"]}


def compared_charts(runs: list[Run]) -> list[tuple[str, str]]:
    """The comparison page's charts for these runs: (id, title)."""
    titles = {**{i: c["title"] for i, c in _metric_charts(runs).items()}, SCORE["id"]: SCORE["title"]}
    return [(i, titles[i]) for i in COMPARED]


def group_key(run: Run) -> str:
    """What makes runs one experiment repeated over seeds: the same task, data (demo or
    not), variant and fingerprint (paper_settings: the config but for the seed, logging,
    backups and verified speed paths), the rule the results table averages over seeds by;
    the name is not config, so it never counts."""
    variant = str(run.config.get("variant", "R1"))
    return json.dumps([run.task, run.is_demo, variant, fingerprint_key(run.config, variant)])


def seed_groups(runs: list[Run]) -> list[dict[str, Any]]:
    """The runs by `group_key`, in the order of their first run: id, the runs' ids, and a
    label naming the task, variant and what sets the group apart from the others (a
    config_diff of one run per group, less the keys a group may vary)."""
    members: dict[str, list[Run]] = {}
    for run in runs:
        members.setdefault(group_key(run), []).append(run)
    firsts = [group[0] for group in members.values()]
    differing = [d["key"] for d in config_diff(firsts) if d["key"] not in NEUTRAL | {"task", "variant"}]
    out = []
    for i, group in enumerate(members.values()):
        first = group[0]
        apart = ", ".join(f"{k}={setting(first, k)}" for k in differing)
        name = f"{first.task} {first.config.get('variant', 'R1')}{' demo' if first.is_demo else ''}"
        out.append(
            {
                "id": i,
                "run_ids": [r.id for r in group],
                "seeds": [r.config.get("seed") for r in group],
                "label": f"{name}{f' · {apart}' if apart else ''} ({len(group)} run{'s' * (len(group) > 1)})",
            }
        )
    return out


def comparison(session: Session, runs: list[Run], max_points: int) -> dict[str, Any]:
    """Everything the comparison page draws, in one answer: with each run its seed group
    (`groups`: runs that differ only by seed, drawn as one mean line and band) and its
    stage marks (where reflow started, where an attempt resumed)."""
    groups = seed_groups(runs)
    group_of = {run_id: g["id"] for g in groups for run_id in g["run_ids"]}
    return {
        "runs": [
            {
                **run_summary(r),
                "label": label(r),
                "config": r.config,
                "group": group_of[r.id],
                "marks": stage_marks(session, r),
            }
            for r in runs
        ],
        "groups": groups,
        "config_diff": config_diff(runs),
        "charts": {c: chart_table(session, runs, c, max_points) for c in COMPARED},
    }


def to_csv(columns: list[str], rows: Iterable[list[Any]]) -> Iterator[str]:
    """CSV text, a chunk per row, so a long history streams instead of sitting in memory."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    yield buffer.getvalue()
    for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow("" if v is None else v for v in row)
        yield buffer.getvalue()
