"""The pages for many runs (runs list pages and filters, sweeps, results, comparison) as a
logged-in browser gets them, and the score figure's evaluation markers and reference curve."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import cast

from matplotlib.container import ErrorbarContainer

from app.services.dashboard import charts
from dlite.tasks import REFERENCE_CURVES, TASKS
from tests.app_helpers import register
from tests.test_multi_run_api import SMALL, final, finish, run_next, sweep


def test_runs_page_pages_filters_and_keeps_its_filters_live(client, browser_client) -> None:
    for i in range(55):
        client.post(
            "/api/runs",
            json={"task": "hopper-medium-v2" if i % 5 else "walker2d-medium-v2", "name": f"r{i}", "config": SMALL},
        ).raise_for_status()
    page = browser_client.get("/").text
    assert "Runs 1–50 of 55" in page and page.count('class="pick"') == 50
    assert 'href="/?offset=50" rel="next"' in page and 'data-refresh="/runs/table?"' in page
    second = browser_client.get("/?offset=50").text
    assert "Runs 51–55 of 55" in second and second.count('class="pick"') == 5 and 'rel="prev"' in second
    walker = browser_client.get("/?task=walker2d-medium-v2&sweep=&tag=&status=").text
    assert "Runs 1–11 of 11" in walker and "hopper-medium-v2</td>" not in walker
    assert 'data-refresh="/runs/table?task=walker2d-medium-v2"' in walker
    fragment = browser_client.get("/runs/table?task=walker2d-medium-v2").text
    assert fragment.count('class="pick"') == 11
    client.patch("/api/runs/3", json={"tags": ["keep"], "note": "the good one"}).raise_for_status()
    tagged = browser_client.get("/?tag=keep").text
    assert "Runs 1–1 of 1" in tagged and 'href="/?tag=keep">keep</a>' in tagged and "the good one" in tagged
    assert "No runs match these filters" in browser_client.get("/?tag=nothing").text


def test_sweeps_results_and_compare_pages(client, browser_client) -> None:
    s = sweep(client, ["hopper-medium-v2"], [0, 1], name="pages", base={})
    wid = register(client)
    ids = []
    for scores in ([98.0, 100.0], [96.0, 97.0]):
        rid, att = run_next(client, wid)
        final(client, rid, att, scores, latency_ms_1env=20.0, latency_ms=50.0, device="cpu")
        finish(client, rid, att)
        ids.append(rid)
    form = browser_client.get("/sweeps").text
    assert all(f'value="{t}"' in form for t in TASKS) and "pages" in form and "2 / 2" in form
    page = browser_client.get(f"/sweeps/{s['id']}").text
    assert "2 of 2 runs succeeded" in page and "Cancel sweep" not in page and "pages/hopper-medium-v2/R1/seed0" in page
    live = browser_client.get(f"/sweeps/{s['id']}/progress").text
    assert "2 of 2 runs succeeded" in live and "mean ± s.e. over 2 seeds" in live and "<html" not in live
    assert browser_client.get("/sweeps/99/progress").status_code == 404
    results = browser_client.get("/results").text
    assert "mean ± s.e. over 2 seeds" in results and "mean ± s.e. over 5 seeds" in results
    assert TASKS["hopper-medium-v2"].paper_r1.source in results and "50.0 Hz" in results
    assert re.search(r'class="verdict-(agrees|close|differs)"', results)

    compare = browser_client.get(f"/compare?runs={ids[0]},{ids[1]}").text
    assert "<code>seed</code>" in compare and "<code>batch_size</code>" not in compare
    assert f"/api/compare/charts/loss.csv?runs={ids[0]},{ids[1]}" in compare
    assert f"/api/runs/{ids[0]}/metrics.csv" in compare
    missing = browser_client.get("/compare?runs=1,999")
    assert missing.status_code == 404 and "run 999 not found" in missing.text
    assert "Tick runs in the runs list" in browser_client.get("/compare").text
    run_page = browser_client.get(f"/runs/{ids[0]}").text
    assert f"/api/runs/{ids[0]}/charts/loss.csv" in run_page and 'id="run-labels"' in run_page


def test_score_figure_marks_quick_and_final_evaluations_and_draws_the_reference() -> None:
    from app.services.figures import chart_figure

    score = next(c for c in charts(3) if c["id"] == "score")
    evaluations = [
        {"step": 100, "kind": "quick", "variant": "R1", "score_mean": 40.0, "score_std": 2.0},
        {"step": 200, "kind": "final", "variant": "R1", "score_mean": 80.0, "score_std": 3.0},
        {"step": 200, "kind": "final", "variant": "R2", "score_mean": 75.0, "score_std": 3.0},
    ]
    curve = REFERENCE_CURVES["halfcheetah-medium-expert-v2"]
    ax = chart_figure(score, "t", {}, evaluations, {"mean": 90.8, "sem": 0.9}, curve).axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert {
        "quick evaluations R1 (mean ± std over episodes)",
        "final evaluations R1 (mean ± std over episodes)",
        "final evaluations R2 (mean ± std over episodes)",
    } <= set(labels)
    [ref] = [line for line in ax.get_lines() if str(line.get_label()).startswith("reference")]
    assert list(cast(Iterable[float], ref.get_xdata())) == list(curve.steps) and ref.get_linestyle() == "--"
    assert len({cast(ErrorbarContainer, c).lines[0].get_marker() for c in ax.containers}) == 3, (
        "quick and final differ by marker"
    )


def test_run_page_shows_an_r2_runs_r1_and_r2_finals_each_against_its_paper_number(client, browser_client) -> None:
    s = sweep(client, ["walker2d-medium-replay-v2"], [0], ["R2"], base={})
    rid, att = run_next(client, register(client))
    final(client, rid, att, [80.0, 82.0], "R1")
    final(client, rid, att, [70.0, 74.0, 72.0], "R2")
    page = browser_client.get(f"/runs/{rid}").text
    task = TASKS["walker2d-medium-replay-v2"]
    r1_row, r2_row = page.split('<tr class="r2">')
    assert "81.0 ± 1.0" in r1_row and f"{81.0 - task.paper_r1.mean:+.1f}" in r1_row
    assert "± std over its 2 episodes (one seed)" in r1_row
    assert "72.0 ±" in r2_row and f"{task.paper_r2.mean:.1f} ± {task.paper_r2.sem:.1f}" in r2_row
    assert f"{72.0 - task.paper_r2.mean:+.1f}" in r2_row and "± std over its 3 episodes (one seed)" in r2_row
    assert s["runs"][0]["id"] == rid
