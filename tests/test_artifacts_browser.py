"""An evaluation's video and plans in chromium (issue 18): the run page plays a real VP9 WebM
uploaded through the worker protocol, draws the uploaded plans for the chosen state
dimension and redraws on another, and the compare page shows the run's video."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.app_helpers import LiveServer, claim_run, create_run, register
from tests.test_artifacts import plans
from tests.test_dashboard_browser import _login

pytestmark = pytest.mark.browser


def vp9_webm(path: Path) -> bytes:
    """30 frames of 64×64 at 10 fps: 3 s of a bar moving across, small and quick to encode."""
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    frames = np.zeros((30, 64, 64, 3), np.uint8)
    for i, frame in enumerate(frames):
        frame[:, 2 * i : 2 * i + 6] = (40, 200, 90)
    with imageio.get_writer(
        path,
        format="FFMPEG",
        fps=10,
        codec="libvpx-vp9",
        macro_block_size=16,
        output_params=["-deadline", "realtime", "-cpu-used", "8"],
    ) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path.read_bytes()


def _expected(doc: dict, dim: int) -> list[tuple[str, list, list]]:
    """The traces the plan chart must hold for `dim`: the states, then each level of each decision."""
    states = ("states reached", list(range(len(doc["states"]))), [s[dim] for s in doc["states"]])
    levels = [
        (
            f"level {lv['level']} ({len(lv['points'])} points over {lv['times'][-1] - lv['times'][0] + 1} steps)",
            lv["times"],
            [p[dim] for p in lv["points"]],
        )
        for d in doc["decisions"]
        for lv in d["levels"]
    ]
    return [states, *levels]


TRACES = "document.getElementById('plan-chart').data.map(t => [t.name, Array.from(t.x), Array.from(t.y)])"


def test_run_page_plays_the_video_and_draws_its_plans(browser, live_server: LiveServer, tmp_path) -> None:
    video = vp9_webm(tmp_path / "episode.webm")
    doc = plans()
    with live_server.client() as api:
        rid = create_run(api)["id"]
        attempt = claim_run(api, register(api))["attempt"]
        for name, data, kind in (
            ("R1-quick-500.webm", video, "video/webm"),
            ("R1-final-1000.webm", video, "video/webm"),
            ("R1-final-1000.plans.json", json.dumps(doc).encode(), "application/json"),
        ):
            r = api.put(
                f"/api/runs/{rid}/artifacts/{name}?attempt={attempt}", content=data, headers={"Content-Type": kind}
            )
            assert r.status_code == 200, r.text
        page = _login(browser, live_server)
        page.goto(f"{live_server.url}/runs/{rid}")
        page.wait_for_function("document.getElementById('episode-video').readyState >= 2", timeout=20_000)
        assert page.get_attribute("#episode-video", "src").endswith(f"/api/runs/{rid}/artifacts/R1-final-1000.webm")
        assert page.get_attribute("#episode-video", "preload") == "metadata"
        page.evaluate("document.getElementById('episode-video').play()")
        page.wait_for_function("document.getElementById('episode-video').currentTime > 0.3", timeout=20_000)
        caption = page.inner_text("#episode-caption")
        assert "R1" in caption and "step 1,000" in caption and "episode score 12.3" in caption
        assert "not one of the scored ones" in caption
        assert page.locator("#episode-pick option").all_inner_texts() == [
            "R1 final · step 1,000",
            "R1 quick · step 500",
        ]

        page.wait_for_function("document.getElementById('plan-chart').data")
        assert [tuple(t) for t in page.evaluate(TRACES)] == _expected(doc, doc["default_dim"])
        layout = page.evaluate(
            "(() => { const l = document.getElementById('plan-chart').layout; "
            "return [l.xaxis.title.text, l.yaxis.title.text]; })()"
        )
        assert layout == ["env step", "angle"]
        page.select_option("#plan-dim", "0")
        page.wait_for_function("document.getElementById('plan-chart').layout.yaxis.title.text === 'z'")
        assert [tuple(t) for t in page.evaluate(TRACES)] == _expected(doc, 0)

        page.goto(f"{live_server.url}/compare?runs={rid}")
        page.wait_for_selector("#compare-videos figure[data-run-id] video")
        page.wait_for_function("document.querySelector('#compare-videos .episode-score').textContent !== ''")
        assert page.inner_text("#compare-videos figcaption") == (
            f"#{rid} hopper-medium-v2 · R1 · step 1,000 · episode score 12.3"
        )
        page.wait_for_function("document.querySelector('#compare-videos video').readyState >= 1", timeout=20_000)
        assert page.errors == []
