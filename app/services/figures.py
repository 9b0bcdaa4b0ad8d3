"""PNG figures of a run for the README and reports, drawn with matplotlib's Agg canvas
(the object API, no pyplot: no global figure state, safe in a server thread)."""

from __future__ import annotations

import os
import textwrap
import threading
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter

from app.db import Database
from app.models import Run
from app.services import runs
from app.services.dashboard import FIGURE_FILES, chart_data, charts, levels
from dlite.tasks import REFERENCE_CURVES, ReferenceCurve

EVAL_MARKERS = {("quick", "R1"): "o", ("quick", "R2"): "s", ("final", "R1"): "D", ("final", "R2"): "P"}
FIGURE_POINTS = 4000  # per series; a PNG a few inches wide cannot show more


def results_dir(data_dir: Path, run_id: int) -> Path:
    return data_dir / "results" / str(run_id)


def _plain(value: float, _pos: int) -> str:
    """Tick labels as numbers are written: 0.02, 1e-05, 250,000; no 10^x, no offset."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"


class _PlainLogFormatter(LogFormatter):
    """matplotlib's choice of which log ticks get a label, written as plain numbers."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return _plain(x, 0)


def chart_figure(
    chart: dict[str, Any],
    label: str,
    series: dict[str, dict[str, Any]],
    evaluations: list[dict[str, Any]],
    paper: dict[str, Any] | None,
    reference: ReferenceCurve | None = None,
) -> Figure:
    """One chart of the run page as a matplotlib figure; `paper` None draws no paper line
    (a demo run). The run's label goes on its own title line, so a long name is not cut off.
    On the score chart quick and final evaluations get different markers, and `reference`
    (a published learning curve) is drawn dashed."""
    fig = Figure(figsize=(7, 4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key in chart["keys"]:
        if key in series and series[key]["steps"]:  # a series may hold non-finite points only
            ax.plot(
                series[key]["steps"],
                series[key]["values"],
                label=key,
                linewidth=0.8,
                marker="o" if len(series[key]["steps"]) < 40 else None,
                markersize=3,
            )
    if chart["id"] == "score":
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for e in evaluations:
            groups.setdefault((e.get("kind") or "", e.get("variant") or "R1"), []).append(e)
        for (kind, variant), group in sorted(groups.items()):
            name = f"{kind} evaluations {variant}".strip() if kind or variant != "R1" else "evaluations"
            ax.errorbar(
                [e["step"] for e in group],
                [e["score_mean"] for e in group],
                yerr=[e["score_std"] for e in group],
                fmt=EVAL_MARKERS.get((kind, variant), "o"),
                markersize=8 if kind == "final" else 5,
                capsize=3,
                label=f"{name} (mean ± std over episodes)",
            )
        if reference is not None:
            ax.plot(
                reference.steps,
                reference.scores,
                linestyle="--",
                color="dimgray",
                linewidth=1,
                label=textwrap.shorten(f"reference: {reference.source}", 70),
            )
        if paper is not None:
            ax.axhline(
                paper["mean"], linestyle="--", color="black", label=f"paper {paper['mean']:.1f} ± {paper['sem']:.1f}"
            )
    values = [v for k in chart["keys"] if k in series for v in series[k]["values"]]
    if chart["log_y"] and values and min(values) > 0:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_PlainLogFormatter())
        ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.set_title("\n".join([chart["title"], *textwrap.wrap(label, 70)]), fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(chart["y_title"])  # the dashboard's axis title, unit included: a PNG read alone says what it plots
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no data yet", transform=ax.transAxes, ha="center")
    return fig


def write_figures(
    out_dir: Path,
    run: Run,
    series: dict[str, dict[str, Any]],
    evaluations: list[dict[str, Any]],
    paper: dict[str, Any] | None,
    reference: ReferenceCurve | None = None,
) -> list[str]:
    """One PNG per chart of the run page that has a `file` (FIGURE_FILES)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    label = runs.run_label(run).replace("$", r"\$")  # a user's name is text, not matplotlib math
    for chart in charts(levels([run.config])):
        if not chart["file"]:
            continue
        fig = chart_figure(chart, label, series, evaluations, paper, reference)
        # a temporary file renamed over: a reader never gets a half-written PNG
        tmp = out_dir / f".{chart['file']}.{os.getpid()}.{threading.get_ident()}.tmp"
        fig.savefig(tmp, format="png")
        os.replace(tmp, out_dir / chart["file"])
    return list(FIGURE_FILES)


def write_run_figures(db: Database, data_dir: Path, run_id: int) -> list[str]:
    """Read the run's curves and evaluations, then write its PNGs (outside the transaction)."""
    with db.read() as session:
        run = runs.get_run(session, run_id)
        series = chart_data(session, run, FIGURE_POINTS)
        evaluations = [runs.evaluation_dict(e) for e in runs.evaluations(session, run_id)]
    return write_figures(
        results_dir(data_dir, run_id),
        run,
        series,
        evaluations,
        None if run.is_demo else runs.paper_numbers(run.task)["r1"],
        None if run.is_demo else REFERENCE_CURVES.get(run.task),
    )
