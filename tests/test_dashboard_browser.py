"""The dashboard in a real browser (Debian's chromium through Playwright) against a real
uvicorn server: login, live charts, the backup button reaching the worker protocol,
charts a researcher can read (log ticks, markers, one x range, smoothing, empty charts),
clone and edit, folded tracebacks, and layouts at 1280 and 390 px. The README's
screenshots come from a real demo run instead: scripts/screenshots.py."""

from __future__ import annotations

import math
import os

import httpx
import pytest

from tests.app_helpers import LiveServer, claim_run, create_run, login_page, register

SERIES = ("loss0", "loss1", "loss2", "invdyn_loss", "score")

pytestmark = pytest.mark.browser


def _points(start: int, stop: int) -> list[dict]:
    return [
        {
            "key": k,
            "step": s,
            "value": (95 * (1 - math.exp(-s / 15)) if k == "score" else 1.0 / (s + 1)),
            "wall_time": 1.7e9 + s,
        }
        for k in SERIES
        for s in range(start, stop)
    ]


def _seed(c: httpx.Client) -> tuple[int, int]:
    """A running run with metrics, a checklist item and a checkpoint; a queued demo run."""
    rid = create_run(c, hub_repo="user/results")["id"]
    attempt = claim_run(c, register(c))["attempt"]
    a = {"attempt": attempt}
    assert c.post(f"/api/runs/{rid}/stage", json={**a, "stage": "train"}).status_code == 200
    assert c.post(f"/api/runs/{rid}/metrics", json={**a, "points": _points(0, 50)}).status_code == 200
    c.post(f"/api/runs/{rid}/checklist", json={**a, "key": "data.ready", "detail": "ok"}).raise_for_status()
    c.post(
        f"/api/runs/{rid}/checkpoints",
        json={**a, "step": 40, "size": 1_000_000, "sha256": "a" * 64, "backup_state": "local"},
    ).raise_for_status()
    c.post(
        "/api/runs", json={"task": "walker2d-medium-v2", "name": "demo", "config": {}, "is_demo": True}
    ).raise_for_status()
    return rid, attempt


def test_dashboard_in_chromium(browser, live_server: LiveServer) -> None:
    with live_server.client() as api:
        rid, attempt = _seed(api)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        page.goto(f"{live_server.url}/")
        assert "/login" in page.url
        page.fill("input[name=token]", live_server.token)
        page.click("button[type=submit]")
        page.wait_for_selector("table.runs")
        assert page.locator("table.runs tbody tr").count() == 2
        assert page.locator("text=demo").count() >= 1

        page.click(f"a[href='/runs/{rid}']")
        page.wait_for_function("""() => ['loss', 'invdyn', 'score'].every(id => {
            const d = document.getElementById('chart-' + id).data;
            return d && d.length && d.every(t => t.x.length === 50); })""")
        names = page.evaluate(
            "['loss','invdyn','score'].map(id => document.getElementById('chart-' + id)"
            ".data.map(t => t.name).filter(n => !n.endsWith('(raw)')))"
        )
        assert names == [["loss0", "loss1", "loss2"], ["invdyn_loss"], ["score"]]
        # no chart can send the run's data to Plotly's cloud, nor link to Plotly
        contexts = page.evaluate(
            "[...document.querySelectorAll('.plot')].map(d => "
            "({cloud: d._context.showSendToCloud, logo: d._context.displaylogo}))"
        )
        assert contexts and all(c == {"cloud": False, "logo": False} for c in contexts)
        page.hover("#chart-loss")
        assert page.locator(".modebar-btn").count() > 0
        assert page.locator("[data-title*='Share'], [data-title*='Cloud'], .modebar-btn--logo").count() == 0

        page.evaluate("window.__notReloaded = true")
        api.post(f"/api/runs/{rid}/metrics", json={"attempt": attempt, "points": _points(50, 60)}).raise_for_status()
        page.wait_for_function(
            "document.getElementById('chart-loss').data[2].x.length === 60"
            " && document.getElementById('chart-score').data[0].x.length === 60"
        )
        assert page.evaluate("window.__notReloaded") is True

        page.click("button[data-action=backup]")
        page.wait_for_function("document.getElementById('backup-state').textContent.includes('queued')")
        beat = api.post(f"/api/runs/{rid}/heartbeat", json={"attempt": attempt, "step": 60, "steps_per_s": 5.0})
        [command] = beat.json()["commands"]
        assert command["kind"] == "backup"
        for state in ("uploading", "done"):
            api.post(
                f"/api/runs/{rid}/commands/{command['id']}", json={"attempt": attempt, "state": state, "detail": None}
            ).raise_for_status()
            page.wait_for_function(f"document.getElementById('backup-state').textContent.includes('{state}')")

        assert live_server.token not in page.content()

        page.set_viewport_size({"width": 390, "height": 844})
        for path in ("/", f"/runs/{rid}", "/runs/new", "/runs/999"):
            page.goto(f"{live_server.url}{path}")
            page.wait_for_load_state("networkidle") if path != f"/runs/{rid}" else page.wait_for_function(
                "document.getElementById('chart-loss').data"
            )
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 391, (path, width)
        assert errors == []


def _open_run(page, server: LiveServer, rid: int) -> None:
    page.goto(f"{server.url}/runs/{rid}")
    page.wait_for_function("[...document.querySelectorAll('.plot')].every(d => d._fullLayout)")


def _smoothing(steps: list[int], values: list[float], weight: float) -> list[float]:
    """dashboard.js's smoothing: TensorBoard's debiased moving average, its weight applying
    per 1/1000 of the series' step span instead of per point (W&B's time-weighted EMA)."""
    per_step = 1000 / (steps[-1] - steps[0])
    total = norm = 0.0
    out = []
    for i, v in enumerate(values):
        decay = weight ** ((steps[i] - steps[i - 1]) * per_step) if i else 0.0
        total, norm = total * decay + v, norm * decay + 1
        out.append(total / norm)
    return out


LOSS = [0.5 * 0.93**s * (1 + 0.05 * math.sin(s)) for s in range(60)]  # 0.5 … 0.007: two decades


def test_charts_a_researcher_can_read(browser, live_server: LiveServer) -> None:
    with live_server.client() as api:
        rid = create_run(api, hub_repo="user/results")["id"]
        a = {"attempt": claim_run(api, register(api))["attempt"]}
        points = [
            {"key": k, "step": s, "value": v, "wall_time": 1.7e9 + s}
            for s in range(60)
            for k, v in (
                ("loss0", LOSS[s]),
                ("loss1", LOSS[s] * 0.9),
                ("loss2", LOSS[s] * 0.8),
                ("invdyn_loss", LOSS[s]),
                ("lr", 2e-4 * (1 - s / 120)),
                ("steps_per_s", 2.0 + math.sin(s)),
            )
        ]
        points.append({"key": "score", "step": 50, "value": 40.0, "wall_time": 1.7e9 + 50})  # one evaluation
        api.post(f"/api/runs/{rid}/metrics", json={**a, "points": points}).raise_for_status()
        page = login_page(browser, live_server)
        _open_run(page, live_server, rid)

        ticks = page.eval_on_selector_all("#chart-loss .ytick text", "ts => ts.map(t => t.textContent)")
        # full numbers, not the first digit only ("0.01, 2, 5, 0.1, 2, 5")
        assert len(ticks) >= 4 and all(0.001 <= float(t) <= 1 for t in ticks), ticks
        assert min(map(float, ticks)) < 0.05 < max(map(float, ticks)), ticks

        assert "markers" in page.evaluate("document.getElementById('chart-score').data[0].mode")
        assert page.locator("#chart-score .scatterlayer .point").count() == 1, "a one-point series shows"

        ranges = page.evaluate("[...document.querySelectorAll('.plot')].map(d => d._fullLayout.xaxis.range)")
        assert len(ranges) == 5 and all(r == ranges[0] for r in ranges) and ranges[0][0] < 0 < 59 < ranges[0][1]
        assert page.evaluate("document.getElementById('chart-lr').data[0].y.length") == 60
        assert page.evaluate("document.getElementById('chart-speed').data.length") == 2  # raw + smoothed

        traces = page.evaluate(
            "document.getElementById('chart-invdyn').data.map(t => ({name: t.name, y: t.y, opacity: t.opacity}))"
        )
        assert [t["name"] for t in traces] == ["invdyn_loss (raw)", "invdyn_loss"] and traces[0]["opacity"] < 0.5
        assert traces[0]["y"] == LOSS
        assert traces[1]["y"] == pytest.approx(_smoothing(list(range(60)), LOSS, 0.6), rel=1e-12)
        assert traces[1]["y"][0] == pytest.approx(LOSS[0]), "bias-corrected: no start-up pull toward 0"
        page.eval_on_selector("#smoothing", "s => { s.value = '0'; s.dispatchEvent(new Event('input')); }")
        assert page.evaluate("document.getElementById('chart-invdyn').data.map(t => t.name)") == ["invdyn_loss"]

        # a zoom on one chart moves all of them; a double-click (autorange) goes back to the shared range
        page.evaluate("Plotly.relayout('chart-loss', {'xaxis.range[0]': 10, 'xaxis.range[1]': 20})")
        page.wait_for_function(
            "[...document.querySelectorAll('.plot')].every(d => d._fullLayout.xaxis.range[1] === 20)"
        )
        page.evaluate("Plotly.relayout('chart-score', {'xaxis.autorange': true})")
        page.wait_for_function(
            f"[...document.querySelectorAll('.plot')].every(d => d._fullLayout.xaxis.range[1] === {ranges[0][1]})"
        )
        more = [{"key": k, "step": 99, "value": 0.03, "wall_time": 1.7e9 + 99} for k in ("loss0", "invdyn_loss")]
        api.post(f"/api/runs/{rid}/metrics", json={**a, "points": more}).raise_for_status()
        page.wait_for_function("[...document.querySelectorAll('.plot')].every(d => d._fullLayout.xaxis.range[1] > 99)")

        trace = (
            'Traceback (most recent call last):\n  File "worker/hub.py", line 3, in push\n'
            "    raise ConnectError()\nhttpx.ConnectError: Name or service not known"
        )
        api.post(f"/api/runs/{rid}/events", json={**a, "level": "error", "message": trace}).raise_for_status()
        summary = page.locator("ol.events details summary").first
        summary.wait_for()
        assert summary.inner_text() == "httpx.ConnectError: Name or service not known"
        assert not page.locator("ol.events pre.traceback").first.is_visible()
        summary.click()
        assert page.locator("ol.events pre.traceback").first.inner_text() == trace
        assert page.errors == []


def test_non_finite_steps_are_marked_where_the_loss_blew_up(browser, live_server: LiveServer) -> None:
    """A red x at the top of the plot area at every non-finite step, its hover naming step and
    values; a step only non-finite points reach widens the shared x range; live points too."""
    with live_server.client() as api:
        rid = create_run(api)["id"]
        a = {"attempt": claim_run(api, register(api))["attempt"]}
        points: list[dict[str, object]] = [
            {"key": k, "step": s, "value": LOSS[s], "wall_time": 1.7e9 + s}
            for s in range(0, 60, 10)
            for k in ("loss0", "loss1", "loss2", "invdyn_loss")
        ]
        points = [p for p in points if (p["key"], p["step"]) not in (("loss0", 30), ("loss1", 30))] + [
            {"key": "loss0", "step": 30, "value": None, "nonfinite": "nan", "wall_time": 1.7e9 + 30},
            {"key": "loss1", "step": 30, "value": None, "nonfinite": "inf", "wall_time": 1.7e9 + 30},
            {"key": "invdyn_loss", "step": 80, "value": None, "nonfinite": "-inf", "wall_time": 1.7e9 + 80},
        ]
        api.post(f"/api/runs/{rid}/metrics", json={**a, "points": points}).raise_for_status()
        page = login_page(browser, live_server)
        _open_run(page, live_server, rid)

        marks = (
            "id => document.getElementById('chart-' + id).data.filter(t => t.name === 'non-finite')"
            ".map(t => ({x: t.x, y: t.y, text: t.text, yaxis: t.yaxis, symbol: t.marker.symbol}))"
        )
        assert page.evaluate(f"({marks})('loss')") == [
            {"x": [30], "y": [1], "text": ["step 30: loss0 = NaN, loss1 = inf"], "yaxis": "y2", "symbol": "x"}
        ]
        assert page.evaluate(f"({marks})('invdyn')")[0]["text"] == ["step 80: invdyn_loss = -inf"]
        assert page.evaluate(f"({marks})('lr')") == []
        y2 = page.evaluate("document.getElementById('chart-loss')._fullLayout.yaxis2")
        assert y2["range"] == [0, 1] and y2["overlaying"] == "y" and y2["visible"] is False
        assert page.evaluate("document.getElementById('chart-loss')._fullLayout.xaxis.range[1]") > 80

        # drawn: at the top of the plot area, above step 30, and hovering it says what happened
        mark = page.locator("#chart-loss .scatterlayer .trace").last.locator(".point")
        assert mark.count() == 1
        box, area = mark.bounding_box(), page.locator("#chart-loss .nsewdrag").bounding_box()
        centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert abs(centre[1] - area["y"]) <= 2 and area["x"] < centre[0] < area["x"] + area["width"]
        page.mouse.move(centre[0], centre[1] + 3)  # just inside the plot area, where Plotly listens
        page.wait_for_selector("#chart-loss .hoverlayer .hovertext", timeout=5000)
        hover = page.locator("#chart-loss .hoverlayer .hovertext")
        assert [hover.nth(i).text_content() for i in range(hover.count())] == ["step 30: loss0 = NaN, loss1 = inf"]

        api.post(
            f"/api/runs/{rid}/metrics",
            json={
                **a,
                "points": [
                    {"key": "loss2", "step": 1230, "value": None, "nonfinite": "nan", "wall_time": 1.7e9 + 1230}
                ],
            },
        ).raise_for_status()
        page.wait_for_function(f"({marks})('loss')[0].x.length === 2")
        assert page.evaluate(f"({marks})('loss')")[0]["text"][1] == "step 1,230: loss2 = NaN"
        assert page.errors == []


def test_demo_and_empty_runs_say_what_is_missing(browser, live_server: LiveServer) -> None:
    with live_server.client() as api:
        rid = api.post(
            "/api/runs", json={"task": "hopper-medium-v2", "name": "demo", "config": {}, "is_demo": True}
        ).json()["id"]
        empty = create_run(api)["id"]
        a = {"attempt": claim_run(api, register(api))["attempt"]}
        api.post(
            f"/api/runs/{rid}/metrics",
            json={**a, "points": [{"key": "score", "step": 10, "value": 5.0, "wall_time": 1.7e9}]},
        ).raise_for_status()
        page = login_page(browser, live_server)
        _open_run(page, live_server, rid)
        assert page.evaluate("document.getElementById('chart-score')._fullLayout.shapes.length") == 0
        assert "paper" not in page.inner_text("#chart-score")
        assert page.evaluate("document.getElementById('chart-score').data.length") == 1

        assert "no data yet" in page.inner_text("#chart-loss")
        assert page.evaluate("document.getElementById('chart-loss')._fullLayout.xaxis.visible") is False
        assert page.locator("#chart-loss .ytick").count() == 0, "no meaningless axes"

        backup = page.locator("button[data-action=backup]")
        assert backup.is_disabled() and "no backup target" in page.inner_text("#backup-why")
        assert "skipped: no backup target" in page.inner_text("li[data-key='smoke.backup']")

        _open_run(page, live_server, empty)
        assert all("no data yet" in page.inner_text(f"#chart-{c}") for c in ("loss", "invdyn", "score", "lr", "speed"))
        assert page.errors == []


def test_clone_and_edit_starts_a_new_run_from_this_ones_config(browser, live_server: LiveServer) -> None:
    with live_server.client() as api:
        rid = create_run(api, hub_repo="user/results", batch_size=64, horizons=[3, 5, 9])["id"]
        page = login_page(browser, live_server)
        _open_run(page, live_server, rid)
        page.click("a[data-action-link=clone]")
        page.wait_for_selector("#clone-note")
        assert page.input_value("#f-batch_size") == "64"
        page.fill("#f-seed", "7")
        page.fill("#f-batch_size", "0")
        page.select_option("#f-on_nonfinite", "continue")
        page.click("#new-run button[type=submit]")
        page.wait_for_selector("#form-error:not([hidden])")
        summary = page.locator("#new-run .submit-row #form-error")
        assert summary.inner_text().startswith("1 setting needs a fix: batch_size")
        assert summary.locator("a").get_attribute("href") == "#f-batch_size"
        assert page.get_attribute("#f-batch_size", "aria-invalid") == "true"
        page.fill("#f-batch_size", "64")
        page.click("#new-run button[type=submit]")
        page.wait_for_url(lambda url: "/runs/new" not in url and f"/runs/{rid}" not in url)
        clone = api.get(f"/api/runs/{page.url.rsplit('/', 1)[1]}").json()
        assert clone["id"] != rid and clone["task"] == "hopper-medium-v2"
        original = api.get(f"/api/runs/{rid}").json()["config"]
        assert clone["config"] == {**original, "seed": 7, "on_nonfinite": "continue"}
        assert page.errors == []


def _inside(page, selector: str, width: int) -> bool:
    box = page.locator(selector).first.bounding_box()
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width


def test_phone_width_shows_progress_scores_and_uncovered_titles(browser, live_server: LiveServer) -> None:
    with live_server.client() as api:
        rid = create_run(api, hub_repo="user/results")["id"]
        a = {"attempt": claim_run(api, register(api))["attempt"]}
        api.post(f"/api/runs/{rid}/metrics", json={**a, "points": _points(0, 30)}).raise_for_status()
        api.post(f"/api/runs/{rid}/heartbeat", json={**a, "step": 30, "steps_per_s": 4.0}).raise_for_status()
        api.post(
            f"/api/runs/{rid}/evaluations",
            json={
                **a,
                "step": 29,
                "kind": "final",
                "score_mean": 61.5,
                "score_std": 2.0,
                "returns": [1.0],
                "scores": [61.5],
                "n_envs": 10,
                "n_episodes": 1,
                "latency_ms": 30.0,
                "latency_ms_1env": 12.0,
                "device": "cpu",
            },
        ).raise_for_status()
        page = login_page(browser, live_server, width=390)
        row = f"tr[data-run-id='{rid}']"
        for cell in ("progress", "final score", "latest quick eval", "best quick eval", "paper", "difference"):
            assert _inside(page, f"{row} td[data-label='{cell}']", 390), cell
        assert "61.5" in page.inner_text(f"{row} td[data-label='final score']")

        _open_run(page, live_server, rid)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        for selector in (
            "#run-progress progress",
            "td[data-label=mine]",
            "tr[data-variant=R1] td[data-label=paper]",
            "tr[data-param=block] td[data-label=value]",
        ):
            assert _inside(page, selector, 390), selector
        assert "61.5" in page.inner_text("td[data-label=mine]") and "reference" in page.inner_text(
            "tr[data-param=block]"
        )
        for chart in ("loss", "score", "speed"):
            page.hover(f"#chart-{chart}")
            bar = page.locator(f"#chart-{chart} .modebar").bounding_box()
            title = page.locator(f"#chart-{chart}").locator("xpath=..").locator("figcaption").bounding_box()
            assert (
                bar and title and (bar["y"] >= title["y"] + title["height"] or bar["x"] >= title["x"] + title["width"])
            ), chart
        assert page.errors == []


def _overlapping_labels(page, selector: str) -> list[tuple[str, str]]:
    """Pairs of tick labels whose boxes overlap on screen."""
    return page.evaluate(
        f"""() => {{
        const boxes = [...document.querySelectorAll('{selector}')].map(t => [t.textContent, t.getBoundingClientRect()]);
        const out = [];
        for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {{
            const [a, b] = [boxes[i][1], boxes[j][1]];
            if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) """
        f"""out.push([boxes[i][0], boxes[j][0]]);
        }}
        return out; }}"""
    )


def post_series(api, rid: int, attempt: dict, series: dict) -> None:
    points = [
        {"key": k, "step": s, "value": f(s), "wall_time": 1.7e9 + s} for s in range(121) for k, f in series.items()
    ]
    api.post(f"/api/runs/{rid}/metrics", json={**attempt, "points": points}).raise_for_status()


def axis(page, chart: str) -> dict:
    return page.evaluate(
        f"(() => {{ const y = document.getElementById('chart-{chart}')._fullLayout.yaxis;"
        " return {type: y.type, tickmode: y.tickmode, tickvals: y.tickvals}; })()"
    )


def labels(page, chart: str) -> list[str]:
    return page.eval_on_selector_all(f"#chart-{chart} .ytick text", "ts => ts.map(t => t.textContent)")


def test_a_log_axis_under_a_decade_gets_a_few_readable_ticks(browser, live_server: LiveServer) -> None:
    """Plotly spaces a sub-decade log axis's ticks evenly in value (0.02, 0.03, … 0.1), piled up
    at its top: such an axis gets the coarsest of 1-2-5, 1-2-3-5 and 1-1.5-2-3-4-5-7 giving 3
    ticks, and one too narrow for any keeps Plotly's (nearly linear there, they read well)."""
    with live_server.client() as api:
        rid = create_run(api)["id"]
        a = {"attempt": claim_run(api, register(api))["attempt"]}
        series = {
            "invdyn_loss": lambda s: 0.1 * 0.985**s,  # 0.1 … 0.016: the 0.02 … 0.1
            **{f"loss{i}": lambda s: 0.056 - 0.006 * s / 120 for i in range(3)},  # 0.056 … 0.050
        }
        post_series(api, rid, a, series)
        rid2 = create_run(api)["id"]
        a2 = {"attempt": claim_run(api, register(api))["attempt"]}
        # 8e-5 … 3e-5: too few 1-2-5 or 1-2-3-5 ticks
        post_series(api, rid2, a2, {f"loss{i}": lambda s: 8e-5 - 5e-5 * s / 120 for i in range(3)})
        page = login_page(browser, live_server)
        _open_run(page, live_server, rid2)
        assert axis(page, "loss")["tickvals"] == [4e-5, 5e-5, 7e-5]
        assert labels(page, "loss") == ["0.00004", "0.00005", "0.00007"]
        _open_run(page, live_server, rid)
        assert axis(page, "invdyn") == {"type": "log", "tickmode": "array", "tickvals": [0.02, 0.05, 0.1]}
        assert labels(page, "invdyn") == ["0.02", "0.05", "0.1"]
        loss = axis(page, "loss")
        assert loss["type"] == "log" and loss["tickmode"] == "auto", "0.05 … 0.056: Plotly's own"
        assert len(labels(page, "loss")) >= 2
        for chart in ("invdyn", "loss"):
            assert _overlapping_labels(page, f"#chart-{chart} .ytick text") == [], chart
        assert page.errors == []


def test_charts_mark_reflow_and_resume_and_read_well_on_a_short_sparse_run(browser, live_server: LiveServer) -> None:
    """An R2 run logged every 100 steps: y titles with units, the reflow start and a resume as
    labelled vertical lines, a default smoothing that ends on the last points (not 20-30 %
    above them), a cosine learning rate drawn on a linear axis down to its 0, log tick labels that do
    not collide; and a run's first logs get whole-step ticks."""
    with live_server.client() as api:
        rid = create_run(api, variant="R2", reflow_gradient_steps=500)["id"]
        a = {"attempt": claim_run(api, register(api))["attempt"]}
        steps = range(100, 1501, 100)
        loss = {s: 0.5 * 0.7 ** (s / 100) * (0.01 if s > 1000 else 1) for s in steps}  # reflow: 100× lower
        # cosine: nearly 0 at R1's end (1e-12 left), 0 after it
        lr = {s: 2e-4 * 0.5 * (1 + math.cos(math.pi * min(s, 1000) / 1000)) or 1e-12 for s in steps}
        lr = {s: 0.0 if s > 1000 else v for s, v in lr.items()}
        points = [
            {"key": k, "step": s, "value": v, "wall_time": 1.7e9 + s}
            for s in steps
            for k, v in (
                ("loss0", loss[s]),
                ("loss1", loss[s]),
                ("loss2", loss[s]),
                ("invdyn_loss", loss[s]),
                ("lr", lr[s]),
                ("steps_per_s", 3.0),
            )
        ]
        points.append({"key": "score", "step": 500, "value": 40.0, "wall_time": 1.7e9 + 500})
        api.post(f"/api/runs/{rid}/metrics", json={**a, "points": points}).raise_for_status()
        api.post(
            f"/api/runs/{rid}/events",
            json={
                **a,
                "level": "info",
                "message": "training resumed from step 400 (local checkpoint), to step 1000 on cpu",
            },
        ).raise_for_status()
        short = create_run(api)["id"]
        b = {"attempt": claim_run(api, register(api, "w2"))["attempt"]}
        api.post(
            f"/api/runs/{short}/metrics",
            json={**b, "points": [{"key": "loss0", "step": 100, "value": 0.5, "wall_time": 1.7e9}]},
        ).raise_for_status()
        page = login_page(browser, live_server)
        _open_run(page, live_server, rid)

        titles = page.evaluate(
            "[...document.querySelectorAll('.plot')].map(d => [d.id, d._fullLayout.yaxis.title.text])"
        )
        assert dict(titles) == {
            "chart-loss": "flow MSE (normalised units)",
            "chart-invdyn": "action MSE ([−1, 1] actions)",
            "chart-score": "D4RL score (100 = expert)",
            "chart-lr": "learning rate (per step)",
            "chart-speed": "training steps/s",
        }

        layout = page.evaluate(
            "(() => { const l = document.getElementById('chart-loss').layout;"
            " return {shapes: l.shapes, notes: l.annotations.map(n => [n.text, n.x])}; })()"
        )
        assert [(s["name"], s["x0"], s["yref"]) for s in layout["shapes"]] == [
            ("resume", 400, "paper"),
            ("reflow", 1000, "paper"),
        ]
        assert layout["notes"] == [["resumed from step 400", 400], ["reflow starts", 1000]]

        drawn = page.evaluate(
            "document.getElementById('chart-loss').data.filter(t => t.name === 'loss0' ||"
            " t.name === 'loss0 (raw)').map(t => ({name: t.name, y: t.y, opacity: t.opacity}))"
        )
        raw, smooth = drawn
        assert raw["name"] == "loss0 (raw)" and raw["opacity"] < 0.5, "the raw line stays, faint"
        assert smooth["y"][0] == pytest.approx(raw["y"][0]), "debiased: no start-up pull toward 0"
        assert smooth["y"][-1] == pytest.approx(raw["y"][-1], rel=0.05), "the end sits on the last points"
        reflow_first = list(steps).index(1100)
        assert smooth["y"][reflow_first] == pytest.approx(raw["y"][reflow_first], rel=1e-9), "restarted at reflow"

        lr_chart = page.evaluate(
            "(() => { const d = document.getElementById('chart-lr');"
            " return {y: d.data[0].y, range: d._fullLayout.yaxis.range,"
            " type: d._fullLayout.yaxis.type}; })()"
        )
        assert lr_chart["type"] == "linear", "a cosine schedule ends at 0: linear, as W&B draws it"
        assert lr_chart["y"] == pytest.approx([lr[s] for s in steps]), "every point drawn, down to 0"
        assert lr_chart["range"][0] <= 0, "its 0 is in view"
        for chart in ("loss", "lr", "invdyn"):
            assert _overlapping_labels(page, f"#chart-{chart} .ytick text") == [], chart
            assert page.eval_on_selector_all(f"#chart-{chart} .ytick text", "ts => ts.length") >= 2, chart

        if os.environ.get("DLITE_SHOT"):
            page.screenshot(path=os.environ["DLITE_SHOT"], full_page=True)
        page.select_option("#x-axis", "wall")
        page.wait_for_function("document.getElementById('chart-loss')._fullLayout.xaxis.type === 'date'")
        wall_x = page.evaluate("document.getElementById('chart-loss').layout.shapes.map(s => typeof s.x0)")
        assert len(wall_x) == 2, "the marks follow onto a wall-time axis"

        _open_run(page, live_server, short)
        ticks = page.eval_on_selector_all("#chart-loss .xtick text", "ts => ts.map(t => t.textContent)")
        assert ticks and all(t.replace(",", "").isdigit() for t in ticks) and len(set(ticks)) == len(ticks), ticks
        assert page.errors == []
