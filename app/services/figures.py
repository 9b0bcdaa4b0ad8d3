"""PNG figures of a run for the README and reports, drawn with matplotlib's Agg canvas
(the object API, no pyplot: no global figure state, safe in a server thread)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from app.db import Database
from app.models import Run
from app.services import runs
from app.services.dashboard import CHARTS, chart_data

FIGURE_POINTS = 4000  # per series; a PNG a few inches wide cannot show more


def results_dir(data_dir: Path, run_id: int) -> Path:
    return data_dir / "results" / str(run_id)


def write_figures(out_dir: Path, run: Run, series: dict[str, dict[str, Any]],
                  evaluations: list[dict[str, Any]], paper: dict[str, Any]) -> list[str]:
    """One PNG per chart of the run page (CHARTS), named by the chart's `file`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    label = runs.run_label(run).replace("$", r"\$")  # a user's name is text, not matplotlib math
    for chart in CHARTS:
        fig = Figure(figsize=(7, 4), dpi=120, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for key in chart["keys"]:
            if key in series:
                ax.plot(series[key]["steps"], series[key]["values"], label=key, linewidth=0.8)
        if chart["id"] == "score":
            if evaluations:
                ax.errorbar([e["step"] for e in evaluations], [e["score_mean"] for e in evaluations],
                            yerr=[e["score_std"] for e in evaluations], fmt="o", capsize=3,
                            label="evaluations (mean ± std)")
            ax.axhline(paper["mean"], linestyle="--", color="black",
                       label=f"paper {paper['mean']:.1f} ± {paper['sem']:.1f}")
        values = [v for k in chart["keys"] if k in series for v in series[k]["values"]]
        if chart["log_y"] and values and min(values) > 0:
            ax.set_yscale("log")
        ax.set(title=f"{chart['title']}: {label}", xlabel="step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data yet", transform=ax.transAxes, ha="center")
        # a temporary file renamed over: a reader never gets a half-written PNG
        tmp = out_dir / f".{chart['file']}.{os.getpid()}.{threading.get_ident()}.tmp"
        fig.savefig(tmp, format="png")
        os.replace(tmp, out_dir / chart["file"])
    return [c["file"] for c in CHARTS]


def write_run_figures(db: Database, data_dir: Path, run_id: int) -> list[str]:
    """Read the run's curves and evaluations, then write its PNGs (outside the transaction)."""
    with db.read() as session:
        run = runs.get_run(session, run_id)
        series = chart_data(session, run_id, FIGURE_POINTS)
        evaluations = [runs.evaluation_dict(e) for e in runs.evaluations(session, run_id)]
    return write_figures(results_dir(data_dir, run_id), run, series, evaluations,
                         runs.paper_numbers(run.task)["r1"])
