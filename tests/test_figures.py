"""The PNG figures of a run (app/services/figures.py) read alone, in a README or a report:
each written figure names what its axes plot, with the unit, as the run page's chart does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from app.models import Run
from app.services import figures
from app.services.dashboard import FIGURE_FILES, charts

STEPS = [100, 200, 300]


def _series(keys: list[str]) -> dict[str, dict[str, Any]]:
    return {k: {"steps": STEPS, "values": [0.5, 0.2, 0.1]} for k in keys}


def test_every_written_figure_labels_its_axes_with_the_dashboards_titles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[tuple[dict[str, Any], Figure]] = []
    draw = figures.chart_figure

    def keep(chart: dict[str, Any], *args: Any) -> Figure:
        drawn.append((chart, draw(chart, *args)))
        return drawn[-1][1]

    monkeypatch.setattr(figures, "chart_figure", keep)
    run = Run(task="hopper-medium-v2", name="seed0", config={"horizons": [5, 5, 9]}, total_steps=300)
    evaluations = [{"step": 300, "kind": "final", "variant": "R1", "score_mean": 40.0, "score_std": 2.0}]
    keys = [k for chart in charts(3) for k in chart["keys"]]
    paper = {"mean": 99.5, "sem": 0.7}
    written = figures.write_figures(tmp_path, run, _series(keys), evaluations, paper)

    assert written == list(FIGURE_FILES) and all((tmp_path / name).stat().st_size > 1000 for name in written)
    assert [chart["file"] for chart, _ in drawn] == list(FIGURE_FILES)
    for chart, fig in drawn:
        ax = fig.axes[0]
        assert ax.get_ylabel() == chart["y_title"] and "(" in chart["y_title"], "the run page's title, with its unit"
        assert ax.get_xlabel() == "step"
        # inside the saved image, not cut off at its left edge by the tick labels
        box = ax.yaxis.label.get_window_extent(fig.canvas.get_renderer())  # type: ignore[attr-defined]
        assert box.x0 >= 0 and box.y0 >= 0 and box.y1 <= fig.bbox.height, chart["id"]
