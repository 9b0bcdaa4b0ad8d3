"""The dashboard in a real browser (Debian's chromium through Playwright) against a real
uvicorn server: login, live charts, the backup button reaching the worker protocol,
and layouts at 1280 and 390 px. Also writes docs/run-page.png for the README."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app_helpers import ROOT, LiveServer, claim, create_run, register

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
SERIES = ("loss0", "loss1", "loss2", "invdyn_loss", "score")

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Skipped only on a developer machine without chromium; in CI a missing one fails."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


def _points(start: int, stop: int) -> list[dict]:
    return [{"key": k, "step": s, "value": (95 * (1 - math.exp(-s / 15)) if k == "score" else 1.0 / (s + 1)),
             "wall_time": 1.7e9 + s} for k in SERIES for s in range(start, stop)]


def _seed(c: httpx.Client) -> tuple[int, int]:
    """A running run with metrics, a checklist item and a checkpoint; a queued demo run."""
    rid = create_run(c)["id"]
    attempt = claim(c, register(c))["attempt"]
    a = {"attempt": attempt}
    assert c.post(f"/api/runs/{rid}/stage", json={**a, "stage": "train"}).status_code == 200
    assert c.post(f"/api/runs/{rid}/metrics", json={**a, "points": _points(0, 50)}).status_code == 200
    c.post(f"/api/runs/{rid}/checklist", json={**a, "key": "data.ready", "detail": "ok"}).raise_for_status()
    c.post(f"/api/runs/{rid}/checkpoints", json={**a, "step": 40, "size": 1_000_000, "sha256": "a" * 64,
                                                 "backup_state": "local"}).raise_for_status()
    c.post("/api/runs", json={"task": "walker2d-medium-v2", "name": "demo", "config": {},
                              "is_demo": True}).raise_for_status()
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
        names = page.evaluate("['loss','invdyn','score'].map(id => "
                              "document.getElementById('chart-' + id).data.map(t => t.name))")
        assert names == [["loss0", "loss1", "loss2"], ["invdyn_loss"], ["score"]]

        page.evaluate("window.__notReloaded = true")
        api.post(f"/api/runs/{rid}/metrics", json={"attempt": attempt, "points": _points(50, 60)}).raise_for_status()
        page.wait_for_function("document.getElementById('chart-loss').data[2].x.length === 60"
                               " && document.getElementById('chart-score').data[0].x.length === 60")
        assert page.evaluate("window.__notReloaded") is True

        page.click("button[data-action=backup]")
        page.wait_for_function("document.getElementById('backup-state').textContent.includes('queued')")
        beat = api.post(f"/api/runs/{rid}/heartbeat", json={"attempt": attempt, "step": 60, "steps_per_s": 5.0})
        [command] = beat.json()["commands"]
        assert command["kind"] == "backup"
        for state in ("uploading", "done"):
            api.post(f"/api/runs/{rid}/commands/{command['id']}",
                     json={"attempt": attempt, "state": state, "detail": None}).raise_for_status()
            page.wait_for_function(f"document.getElementById('backup-state').textContent.includes('{state}')")

        page.screenshot(path=str(ROOT / "docs" / "run-page.png"))
        assert live_server.token not in page.content()

        page.set_viewport_size({"width": 390, "height": 844})
        for path in ("/", f"/runs/{rid}", "/runs/new", "/runs/999"):
            page.goto(f"{live_server.url}{path}")
            page.wait_for_load_state("networkidle") if path != f"/runs/{rid}" else \
                page.wait_for_function("document.getElementById('chart-loss').data")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 391, (path, width)
        assert errors == []
