"""Ablation sweeps in a real browser (Debian's chromium via Playwright) against a real uvicorn
server: a preset queues the paper's ablation in one click, the form queues one, the results
page draws score against planning Hz, and the comparison colours runs by the varied setting.
The runs' numbers are made up by this test."""

from __future__ import annotations

import statistics

import pytest

from tests.app_helpers import LiveServer, login_page
from tests.test_ablations import play

pytestmark = pytest.mark.browser
TASK = "halfcheetah-medium-expert-v2"
STEPS = {1: (70.0, 4.0), 3: (85.0, 10.0), 10: (88.0, 30.0)}
"""sampling_steps: (score, one-environment planning latency in ms) of seed 0; seed 1 adds 2 to both."""


def test_score_against_planning_hz_is_drawn_for_an_ablation(browser, live_server: LiveServer) -> None:
    with live_server.client() as api:
        r = api.post(
            "/api/sweeps",
            json={
                "name": "steps",
                "tasks": [TASK],
                "seeds": [0, 1],
                "config": {"diffusion_gradient_steps": 1000, "invdyn_gradient_steps": 1000},
                "ablation": {"setting": "sampling_steps", "values": [1, 3, 10]},
            },
        )
        assert r.status_code == 201, r.text
        sweep = r.json()
        play(api, len(sweep["runs"]), lambda cfg: tuple(x + 2 * cfg["seed"] for x in STEPS[cfg["sampling_steps"]]))

    page = login_page(browser, live_server)
    page.goto(f"{live_server.url}/results?sweep={sweep['id']}")
    page.wait_for_selector("#ablations[data-ready=true]")
    [trace] = page.evaluate(
        f"document.getElementById('ablation-chart-{sweep['id']}').data.map(t => ("
        "{name: t.name, x: t.x, y: t.y, text: t.text, ey: t.error_y.array, ex: t.error_x.array}))"
    )
    hz = {n: [1000 / STEPS[n][1], 1000 / (STEPS[n][1] + 2)] for n in STEPS}
    assert trace["name"] == "R1 (± s.e. over seeds)" and trace["text"] == ["1", "3", "10"]
    assert trace["x"] == pytest.approx([statistics.fmean(hz[n]) for n in STEPS])
    assert trace["y"] == pytest.approx([STEPS[n][0] + 1 for n in STEPS])
    assert trace["ey"] == pytest.approx([1.0] * 3), "s.e. over seeds of (s, s + 2) is 1"
    assert trace["ex"] == pytest.approx([statistics.stdev(hz[n]) / 2**0.5 for n in STEPS])
    assert page.locator(".ablation-chart .scatterlayer .point").count() == 3, "the points are drawn"
    assert page.inner_text("#ablation-status") == ""

    page.click("text=Compare, coloured by sampling_steps")
    page.wait_for_selector("#compare-charts[data-ready=true]")
    score_colours = (
        "document.getElementById('compare-score').data"
        ".filter(t => !t.name.startsWith('reference') && t.meta !== 'band').map(t => t.marker.color)"
    )
    colours = page.evaluate(score_colours)
    assert len(colours) == 3 and len(set(colours)) == 3, "a value's two seeds are one group, one colour each"
    page.uncheck("#compare-grouped")
    page.wait_for_function("!document.getElementById('compare-score').data.some(t => t.meta === 'band')")
    colours = page.evaluate(score_colours)
    assert len(colours) == 6 and len(set(colours)) == 3, "one colour per value, shared by its two seeds"
    assert page.errors == []


def test_a_preset_and_the_form_queue_ablations(browser, live_server: LiveServer) -> None:
    page = login_page(browser, live_server)
    page.goto(f"{live_server.url}/sweeps")
    assert "The paper's numbers are Lite-D's" in page.inner_text("main")
    page.click("section[data-preset=levels] button[data-sweep]")
    page.wait_for_url("**/sweeps/*")
    with live_server.client() as api:
        [preset] = api.get("/api/sweeps").json()
        assert preset["ablation"]["values"] == [[9, 17], [5, 5, 9], [5, 3, 5, 5]] and preset["progress"]["total"] == 15
    assert "ablation-table" in page.content()

    page.goto(f"{live_server.url}/sweeps")
    page.check(f"input[name=tasks][value='{TASK}']")
    page.fill("input[name=seeds]", "0")
    page.fill("input[name=name]", "form-ablation")
    page.select_option("#sw-ablation", "horizons")
    page.fill("#sw-values", "3,5,17\n\n[17, 5, 3]\n")
    page.click("#sweep-form button[type=submit]")
    page.wait_for_url("**/sweeps/*")
    with live_server.client() as api:
        made = next(s for s in api.get("/api/sweeps").json() if s["name"] == "form-ablation")
        assert made["ablation"] == {"setting": "horizons", "values": [[3, 5, 17], [17, 5, 3]]}

    page.goto(f"{live_server.url}/sweeps")  # a bad value is shown where it is, and nothing is queued
    page.check(f"input[name=tasks][value='{TASK}']")
    page.select_option("#sw-ablation", "horizons")
    page.fill("#sw-values", "5,5,9\n5")
    page.click("#sweep-form button[type=submit]")
    page.wait_for_selector("#sweep-error:not([hidden])")
    assert "ablation.values.1: horizons:" in page.inner_text("#sweep-error")
    with live_server.client() as api:
        assert len(api.get("/api/sweeps").json()) == 2
    assert page.errors == []
