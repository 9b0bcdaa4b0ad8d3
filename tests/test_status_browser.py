"""The status parts that live in the browser (Debian's chromium through Playwright against a
real server): an open run page notices a silent worker with no message to say so, and its
clock stops; the sweep form offers a fixed-choice setting's choices instead of a text field."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.app_helpers import LiveServer, claim_run, create_run, login_page, register, wait_for

pytestmark = pytest.mark.browser


def test_an_open_run_page_shows_its_worker_lost_and_stops_its_clock(browser, live_server: LiveServer, tmp_path: Path):
    with live_server.client() as api:
        rid = create_run(api)["id"]
        got = claim_run(api, register(api))
        attempt = {"attempt": got["attempt"]}
        api.post(f"/api/runs/{rid}/heartbeat", json={**attempt, "step": 10, "steps_per_s": 5.0}).raise_for_status()
        page = login_page(browser, live_server)
        fetches: list[str] = []
        page.on("request", lambda r: fetches.append(r.url) if r.url.endswith(f"/runs/{rid}/panels") else None)
        page.clock.install()
        page.goto(f"{live_server.url}/runs/{rid}")
        page.wait_for_selector("#run-state .status-running")
        state = lambda: page.inner_text("#run-state")  # noqa: E731
        elapsed = lambda: page.inner_text("#run-facts").split("elapsed")[1].split("·")[0].strip()  # noqa: E731

        # silent for 0.8 leases, written straight to the database: nothing reaches the page's stream
        engine = create_engine(f"sqlite:///{tmp_path / 'dlite.db'}")
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE runs SET lease_expires_at = :t WHERE id = :id"), {"t": time.time() + 12, "id": rid}
            )
        engine.dispose()
        page.clock.run_for(5_000)
        time.sleep(1)
        assert "worker lost" not in state() and not fetches, "nothing refreshes it before the 10 s tick"
        page.clock.run_for(6_000)
        wait_for(lambda: "worker lost" in state(), 10, "the periodic refresh to say worker lost")
        assert "icon-warning" in page.inner_html("#run-state") and "ETA" not in page.inner_text("#run-progress")
        assert "its lease expires in" in page.inner_text("#run-waiting")
        stopped = elapsed()
        time.sleep(1.5)  # a clock still running would now show another second
        before = len(fetches)
        page.clock.run_for(10_000)
        wait_for(lambda: len(fetches) > before, 10, "the next tick")
        page.wait_for_load_state("networkidle")
        assert elapsed() == stopped, "the clock stopped at the last heartbeat"

        api.post(f"/api/runs/{rid}/finish", json={**attempt, "status": "failed", "error": "gone"}).raise_for_status()
        wait_for(lambda: "failed" in state(), 10, "the stream to show the end")
        ended = len(fetches)
        page.clock.run_for(30_000)
        time.sleep(1)
        assert len(fetches) == ended, "an ended run's panels are not re-fetched on a timer"
        assert page.errors == []


def test_the_sweep_form_offers_the_choices_of_a_setting_that_has_them(browser, live_server: LiveServer) -> None:
    page = login_page(browser, live_server)
    page.goto(f"{live_server.url}/sweeps")
    form = page.locator("#sweep-form")
    form.locator("input[name=tasks][value='hopper-medium-v2']").check()
    page.fill("#sw-seeds", "0")
    row = form.locator(".override").nth(0)
    text_value = row.locator("input.value")
    assert text_value.is_visible()
    row.locator("select").nth(0).select_option("block")
    choice = row.locator("select.value[data-setting=block]")
    assert choice.is_visible() and not text_value.is_visible()
    assert choice.locator("option").all_inner_texts() == ["reference (default)", "dit"]
    choice.select_option("dit")
    second = form.locator(".override").nth(1)
    second.locator("select").nth(0).select_option("d_model")
    second.locator("input.value").fill("64")

    form.locator("#sw-ablation").select_option("on_nonfinite")
    assert not page.locator("#sw-values").is_visible()
    boxes = form.locator("fieldset.value[data-setting=on_nonfinite] input[type=checkbox]")
    assert boxes.count() == 2 and boxes.nth(0).is_visible()
    boxes.nth(0).check()
    boxes.nth(1).check()
    with page.expect_navigation(url="**/sweeps/*"):
        form.locator("button[type=submit]").click()
    sweep_id = int(page.url.rsplit("/", 1)[1])
    with live_server.client() as api:
        sweep = api.get(f"/api/sweeps/{sweep_id}").json()
    assert sweep["config"] == {"block": "dit", "d_model": 64}
    assert sweep["ablation"] == {"setting": "on_nonfinite", "values": ["stop", "continue"]}
    assert page.errors == []
