"""The run page's system panel and console in chromium (issue 22): units on the y axes, a
CPU worker's GPU charts saying there is none, live samples and console lines over the
run's stream, a traceback folded under its exception."""

from __future__ import annotations

import pytest

from tests.app_helpers import LiveServer, claim_run, create_run, login_page, register

pytestmark = pytest.mark.browser


def _sample(t: float, cpu: float) -> list[dict]:
    values = {"system/cpu_percent": cpu, "system/ram_used_gib": 1.5, "system/disk_used_gib": 20.0}
    return [{"key": k, "step": int(t), "value": v, "wall_time": t} for k, v in values.items()]


def test_run_page_shows_system_metrics_and_a_live_console(browser, live_server: LiveServer) -> None:
    with live_server.client() as api:
        rid = create_run(api)["id"]
        a = {"attempt": claim_run(api, register(api))["attempt"]}
        api.post(
            f"/api/runs/{rid}/metrics", json={**a, "points": _sample(1.8e9, 40) + _sample(1.8e9 + 15, 60)}
        ).raise_for_status()
        page = login_page(browser, live_server)
        page.goto(f"{live_server.url}/runs/{rid}")
        page.wait_for_function("[...document.querySelectorAll('.system-plot')].every(d => d._fullLayout)")
        assert page.evaluate("document.getElementById('chart-system-cpu').data[0].y") == [40, 60]
        units = page.evaluate("[...document.querySelectorAll('.system-plot')].map(d => d.layout.yaxis.title.text)")
        assert units == ["%", "GiB", "GiB", "%", "GiB"]
        assert "none: the worker runs on cpu, no GPU" in page.inner_text("#chart-system-gpu-util")
        assert page.evaluate("document.getElementById('chart-system-gpu-memory').data.length") == 0
        assert "No console lines yet" in page.inner_text("#console")

        api.post(f"/api/runs/{rid}/metrics", json={**a, "points": _sample(1.8e9 + 30, 80)}).raise_for_status()
        trace = "Traceback (most recent call last):\n  File \"t.py\", line 3, in f\nKeyError: 'x'"
        api.post(
            f"/api/runs/{rid}/console",
            json={
                **a,
                "lines": [
                    {"uid": "1" * 32, "ts": 1.8e9, "level": "info", "text": "worker.executor: training started"},
                    {"uid": "2" * 32, "ts": 1.8e9 + 1, "level": "error", "text": trace},
                ],
            },
        ).raise_for_status()
        page.wait_for_function("document.getElementById('chart-system-cpu').data[0].y.length === 3")
        page.wait_for_selector("#console li >> text=training started")
        assert page.inner_text("#console details summary") == "KeyError: 'x'"
        assert not page.locator("#console details pre").is_visible(), "folded until opened"
        assert page.errors == []
