"""The comparison page and the results over seeds in a real browser (Debian's chromium via
Playwright) against a real uvicorn server: pick two runs in the runs list, compare them,
download chart data as CSV and JSON. Writes docs/compare-page.png and docs/results-table.png
(the runs' numbers are made up by this test, around the paper's, to fill the pages)."""

from __future__ import annotations

import csv
import io
import json
import math
import random

import httpx
import pytest

from dlite.tasks import REFERENCE_CURVES, TASKS
from tests.app_helpers import ROOT, LiveServer, login_page, register

pytestmark = pytest.mark.browser
STEPS = 100_000
TASKS_SHOWN = ("halfcheetah-medium-expert-v2", "hopper-medium-v2", "walker2d-medium-replay-v2")


def _post(api: httpx.Client, path: str, body: dict) -> None:
    r = api.post(path, json=body)
    assert r.status_code == 200, r.text


def _play_run(api: httpx.Client, wid: str, rng: random.Random, variants: tuple[str, ...] = ("R1", "R2")) -> int:
    """Claims the next run and gives it loss curves, quick evaluations and final evaluations."""
    got = api.post(f"/api/workers/{wid}/claim").json()
    rid, a, task = got["run_id"], {"attempt": got["attempt"]}, TASKS[got["task"]]
    decay, noise = rng.uniform(3e-5, 6e-5), rng.uniform(0.02, 0.06)
    points = [
        {
            "key": k,
            "step": s,
            "value": scale * (0.05 + math.exp(-decay * s)) * (1 + noise * math.sin(s / 700)),
            "wall_time": 1.7e9 + s / 5,
        }
        for s in range(0, STEPS + 1, 1000)
        for k, scale in (("loss0", 1.0), ("loss1", 0.8), ("loss2", 0.6), ("invdyn_loss", 0.3))
    ]
    _post(api, f"/api/runs/{rid}/metrics", {**a, "points": points})
    for step in range(10_000, STEPS + 1, 10_000):
        level = task.paper_r1.mean * (1 - math.exp(-step / 25_000)) + rng.gauss(0, 3)
        scores = [level + rng.gauss(0, 4) for _ in range(5)]
        _post(
            api,
            f"/api/runs/{rid}/evaluations",
            {
                **a,
                "step": step,
                "kind": "quick",
                "variant": "R1",
                "score_mean": sum(scores) / 5,
                "score_std": _std(scores),
                "returns": scores,
                "scores": scores,
                "n_envs": 5,
                "n_episodes": 5,
            },
        )
    for variant, paper, latency in (("R1", task.paper_r1, 18.0), ("R2", task.paper_r2, 7.0)):
        if variant not in variants:
            continue
        run_mean = paper.mean + rng.gauss(-1.5, 3.0)  # seeds differ by more than episodes average out
        scores = [run_mean + rng.gauss(0, 5.0) for _ in range(150)]
        _post(
            api,
            f"/api/runs/{rid}/evaluations",
            {
                **a,
                "step": STEPS,
                "kind": "final",
                "variant": variant,
                "score_mean": sum(scores) / len(scores),
                "score_std": _std(scores),
                "returns": scores,
                "scores": scores,
                "n_envs": 50,
                "n_episodes": 3,
                "latency_ms": latency * 3 * rng.uniform(0.95, 1.05),
                "latency_ms_1env": latency * rng.uniform(0.95, 1.05),
                "device": "cpu (2 cores)",
            },
        )
    _post(api, f"/api/runs/{rid}/finish", {**a, "status": "succeeded"})
    return rid


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def test_compare_two_runs_and_download_their_data(browser, live_server: LiveServer, tmp_path) -> None:
    with live_server.client() as api:
        r = api.post(
            "/api/sweeps",
            json={"name": "paper", "tasks": list(TASKS_SHOWN), "seeds": [0, 1, 2], "variants": ["R2"], "config": {}},
        )  # the paper's settings: compared
        assert r.status_code == 201, r.text
        wid, rng = register(api), random.Random(11)
        ids = [_play_run(api, wid, rng) for _ in r.json()["runs"]]
        single = api.post(
            "/api/runs",
            json={
                "task": "hopper-medium-expert-v2",
                "name": "one-seed",
                "config": {"diffusion_gradient_steps": STEPS, "invdyn_gradient_steps": STEPS},
            },
        ).json()["id"]  # shorter: not compared
        _play_run(api, wid, rng, ("R1",))
        first, second = ids[0], ids[1]  # halfcheetah-medium-expert-v2, R2, seeds 0 and 1
        expected_loss = api.get("/api/compare/charts/loss.json", params={"runs": f"{first},{second}"}).json()

    page = login_page(browser, live_server)
    page.check(f"tr[data-run-id='{first}'] input.pick")
    page.check(f"tr[data-run-id='{second}'] input.pick")
    assert page.inner_text("#selected-count") == "2 selected"
    page.click("#compare-selected")
    page.wait_for_selector("#compare-charts[data-ready=true]")
    assert page.url.endswith(f"/compare?runs={first},{second}")
    # two seeds of one config are drawn as one band by default: each run, unsmoothed, here
    page.eval_on_selector("#compare-smoothing", "s => { s.value = '0'; s.dispatchEvent(new Event('input')); }")
    page.uncheck("#compare-grouped")
    page.wait_for_function("!document.getElementById('compare-loss').data.some(t => t.meta === 'band')")

    traces = page.evaluate(
        "['loss', 'invdyn', 'score'].map(id => document.getElementById('compare-' + id).data"
        ".map(t => ({name: t.name, n: t.x.length, color: t.line && t.line.color,"
        " symbol: t.marker && t.marker.symbol, dash: t.line && t.line.dash, meta: t.meta})))"
    )
    loss, invdyn, score = traces
    assert len(loss) == 6 and {t["n"] for t in loss} == {STEPS // 1000 + 1}
    assert len({t["color"] for t in loss}) == 2 and len({t["dash"] for t in loss}) == 3  # colour per run, dash per key
    assert len(invdyn) == 2
    curve = REFERENCE_CURVES["halfcheetah-medium-expert-v2"]
    [reference] = [t for t in score if t["name"].startswith("reference")]
    assert reference["n"] == len(curve.steps) and reference["dash"] == "dash" and reference["meta"] == curve.source
    symbols = {t["name"].split(" · ")[1].split(" (")[0]: t["symbol"] for t in score if " · " in t["name"]}
    assert symbols == {"quick R1": "circle-open", "final R1": "diamond", "final R2": "square"}
    ranges = page.evaluate("[...document.querySelectorAll('.plot')].map(d => d._fullLayout.xaxis.range)")
    assert all(r == ranges[0] for r in ranges), "shared step axis"
    assert page.locator("table.config-diff code", has_text="seed").count() == 1

    with page.expect_download() as download:
        page.click("a[href^='/api/compare/charts/loss.csv']")
    rows = list(csv.DictReader(io.StringIO(download.value.path().read_text())))
    assert {int(r["run_id"]) for r in rows} == {first, second} and len(rows) == len(expected_loss["rows"])
    assert [float(r["value"]) for r in rows] == [row[4] for row in expected_loss["rows"]]
    with page.expect_download() as download:
        page.click("a[href^='/api/compare/charts/score.json']")
    table = json.loads(download.value.path().read_text())
    kinds = {(row[0], row[2], row[3]) for row in table["rows"]}
    assert {(first, "final", "R2"), (second, "quick", "R1"), (None, "reference", "R1")} <= kinds
    with page.expect_download() as download:
        page.click(f"a[href='/api/runs/{first}/metrics.csv']")
    history = download.value.path().read_text().splitlines()
    assert history[0] == "key,step,value,wall_time" and len(history) == 1 + 4 * (STEPS // 1000 + 1)

    docs = ROOT / "docs"
    page.set_viewport_size({"width": 1280, "height": 1300})
    page.check("#compare-grouped")  # the screenshot shows the default: two seeds as one mean line and band
    page.wait_for_function("document.getElementById('compare-loss').data.some(t => t.meta === 'band')")
    page.screenshot(path=str(docs / "compare-page.png"), full_page=True)

    page.goto(f"{live_server.url}/runs/{first}")  # the run page's score chart: evaluations and the reference
    page.wait_for_function(
        "(document.getElementById('chart-score').data || []).some(t => t.name.startsWith('reference'))"
    )
    names = page.evaluate("document.getElementById('chart-score').data.map(t => t.name)")
    assert {
        "quick R1 (± std over episodes)",
        "final R1 (± std over episodes)",
        "final R2 (± std over episodes)",
    } <= set(names)

    page.goto(f"{live_server.url}/results")
    page.wait_for_selector("table.results-table")
    rows = page.locator("table.results-table tbody tr")
    assert rows.count() == 2 * len(TASKS_SHOWN) + 1
    text = page.inner_text("table.results-table")
    assert "mean ± s.e. over 3 seeds" in text and "not a standard error" in text and f"#{single}" in text
    assert text.count("not compared: other settings than the paper's") == 1 and "agrees" in text
    page.locator("main").screenshot(path=str(docs / "results-table.png"))
    assert page.errors == []


def test_sweep_form_and_run_labels_in_the_browser(browser, live_server: LiveServer) -> None:
    page = login_page(browser, live_server)
    page.goto(f"{live_server.url}/sweeps")
    page.check("input[name=tasks][value='hopper-medium-v2']")
    page.check("input[name=variants][value='R2']")
    page.fill("input[name=seeds]", "3-4")
    page.fill("input[name=name]", "form")
    page.select_option(".override >> nth=0 >> select", "batch_size")
    page.fill(".override >> nth=0 >> input", "64")
    page.click("#sweep-form button[type=submit]")
    page.wait_for_url("**/sweeps/*")
    with live_server.client() as api:
        [sweep] = api.get("/api/sweeps").json()
        runs = api.get(f"/api/sweeps/{sweep['id']}").json()["runs"]
        assert sorted(r["name"] for r in runs) == [
            f"form/hopper-medium-v2/{v}/seed{s}" for v in ("R1", "R2") for s in (3, 4)
        ]
        assert {api.get(f"/api/runs/{r['id']}").json()["config"]["batch_size"] for r in runs} == {64}
    assert "0 of 4 runs succeeded" in page.inner_text("main")

    page.goto(f"{live_server.url}/sweeps")  # a bad override is shown, and nothing is queued
    page.check("input[name=tasks][value='hopper-medium-v2']")
    page.select_option(".override >> nth=0 >> select", "batch_size")
    page.fill(".override >> nth=0 >> input", "0")
    page.click("#sweep-form button[type=submit]")
    page.wait_for_selector("#sweep-error:not([hidden])")
    assert "batch_size" in page.inner_text("#sweep-error")

    rid = runs[0]["id"]
    page.goto(f"{live_server.url}/runs/{rid}")
    page.fill("#run-labels input[name=tags]", "baseline, keep")
    page.fill("#run-labels textarea[name=note]", "first try")
    page.check("#run-labels input[name=archived]")
    page.click("#run-labels button[type=submit]")
    page.wait_for_function("document.getElementById('labels-state').textContent === 'saved'")
    with live_server.client() as api:
        got = api.get(f"/api/runs/{rid}").json()
        assert (got["tags"], got["note"], got["archived"]) == (["baseline", "keep"], "first try", True)
    page.on("dialog", lambda d: d.accept())
    page.click("#run-labels button[data-method=DELETE]")
    page.wait_for_url(f"{live_server.url}/")
    with live_server.client() as api:
        assert api.get(f"/api/runs/{rid}").status_code == 404
    assert page.errors == []


def test_seeds_are_one_band_and_the_axis_fits_short_runs(browser, live_server: LiveServer) -> None:
    """Three seeds of one config are one mean line and min–max band (± s.e. on request, each run
    when untoggled) beside a run of another config; the x axis fits their 1,200 steps, the 86k-step
    reference is clipped to them; log axis, y titles, smoothing, wall time and stage marks."""
    task = "halfcheetah-medium-expert-v2"
    with live_server.client() as api:
        r = api.post(
            "/api/sweeps",
            json={
                "name": "short",
                "tasks": [task],
                "seeds": [0, 1, 2],
                "variants": ["R1"],
                "config": {"diffusion_gradient_steps": 1200, "invdyn_gradient_steps": 1200},
            },
        )
        assert r.status_code == 201, r.text
        other = api.post(
            "/api/runs",
            json={
                "task": task,
                "name": "small batch",
                "config": {"diffusion_gradient_steps": 1200, "invdyn_gradient_steps": 1200, "batch_size": 64},
            },
        ).json()["id"]
        wid = register(api)
        ids = []
        for k in range(4):
            got = api.post(f"/api/workers/{wid}/claim").json()
            rid, a = got["run_id"], {"attempt": got["attempt"]}
            ids.append(rid)
            points = [
                {"key": key, "step": s, "value": (k + 1) * 0.1 * 0.998**s, "wall_time": 1.7e9 + 2 * s}
                for s in range(100, 1201, 100)
                for key in ("loss0", "loss1", "loss2", "invdyn_loss")
            ]
            _post(api, f"/api/runs/{rid}/metrics", {**a, "points": points})
            _post(
                api,
                f"/api/runs/{rid}/evaluations",
                {
                    **a,
                    "step": 1200,
                    "kind": "quick",
                    "variant": "R1",
                    "score_mean": 30.0 + k,
                    "score_std": 1.0,
                    "returns": [1.0],
                    "scores": [30.0 + k],
                    "n_envs": 1,
                    "n_episodes": 1,
                },
            )
        _post(
            api,
            f"/api/runs/{ids[0]}/events",
            {
                "attempt": 1,
                "level": "info",
                "message": "training resumed from step 200 (local checkpoint), to step 1200",
            },
        )
    seeds = [i for i in ids if i != other]
    page = login_page(browser, live_server)
    page.goto(f"{live_server.url}/compare?runs={','.join(map(str, ids))}")
    page.wait_for_selector("#compare-charts[data-ready=true]")
    page.eval_on_selector("#compare-smoothing", "s => { s.value = '0'; s.dispatchEvent(new Event('input')); }")
    loss = "document.getElementById('compare-loss')"
    traces = page.evaluate(
        f"{loss}.data.map(t => ({{name: t.name, x: t.x, y: t.y, fill: t.fill || null, meta: t.meta || null}}))"
    )
    means = [t for t in traces if t["meta"] == "mean"]
    bands = [t for t in traces if t["meta"] == "band"]
    assert len(means) == 3 and len(bands) == 6, [t["name"] for t in traces]  # one group × three level keys
    assert all("mean, band min–max over the runs" in t["name"] for t in means)
    assert [t["fill"] for t in bands].count("tonexty") == 3
    mean0 = next(t for t in means if t["name"].endswith("loss0 — mean, band min–max over the runs"))
    assert mean0["x"][0] == 100 and mean0["y"][0] == pytest.approx(0.2 * 0.998**100)  # (0.1 + 0.2 + 0.3) / 3
    low0 = next(t for t in bands if t["name"].startswith(mean0["name"].split(" — ")[0]) and not t["fill"])
    assert low0["y"][0] == pytest.approx(0.1 * 0.998**100)
    assert sum(1 for t in traces if t["meta"] is None and t["name"].startswith(f"#{other}")) == 3, "its own lines"

    layout = page.evaluate(
        f"(() => {{ const l = {loss}._fullLayout; return {{x: l.xaxis.range, y: l.yaxis.type,"
        " title: l.yaxis.title.text, notes: l.annotations.map(a => a.text),"
        " shapes: l.shapes.map(s => [s.x0, s.line.dash])}; })()"
    )
    assert layout["x"][1] < 1250 and layout["y"] == "log" and layout["title"] == "flow MSE (normalised units)"
    assert layout["shapes"] == [[200, "dot"]] and layout["notes"] == [f"#{seeds[0]} resumed from step 200"]
    [reference] = page.evaluate(
        "document.getElementById('compare-score').data.filter(t => t.name.startsWith("
        "'reference')).map(t => ({x: t.x, name: t.name}))"
    )
    assert 1000 in reference["x"] and max(reference["x"]) <= 1250 and "clipped to the runs' steps" in reference["name"]
    score_range = page.evaluate("document.getElementById('compare-score')._fullLayout.xaxis.range")
    assert score_range == layout["x"], "one x range, the runs' own"

    page.select_option("#compare-band", "sem")
    page.wait_for_function(f"{loss}.data.some(t => t.name.includes('± s.e.'))")
    page.uncheck("#compare-grouped")
    page.wait_for_function(f"!{loss}.data.some(t => t.meta === 'band')")
    assert page.evaluate(f"{loss}.data.length") == 4 * 3
    page.select_option("#compare-x", "wall")
    page.wait_for_function(f"{loss}._fullLayout.xaxis.title.text.includes('since the run')")
    assert page.evaluate(f"Math.max(...{loss}.data[0].x)") == pytest.approx(2200 / 60)  # minutes since its first point
    page.uncheck("#compare-log-y")
    page.wait_for_function(f"{loss}._fullLayout.yaxis.type === 'linear'")
    assert page.errors == []
