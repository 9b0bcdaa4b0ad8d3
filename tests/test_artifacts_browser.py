"""An evaluation's video and plans in chromium (issue 18): the run page plays a real recorded
episode (dlite.record's VP9 WebM, uploaded through the worker protocol), draws its plans for
the chosen state dimension and redraws on another, and the compare page plays two runs'
videos side by side."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dlite.record import Recording, RenderUnavailable, record_episode
from tests.app_helpers import LiveServer, claim_run, create_run, login_page, register
from tests.test_dlite_record import render_unavailable, tiny_planner
from tests.test_worker_e2e import TASK

pytestmark = pytest.mark.browser

STEP = 1000
VIDEO, PLANS = f"R1-final-{STEP}.webm", f"R1-final-{STEP}.plans.json"


@dataclass(frozen=True)
class Episode:
    recording: Recording
    plans: dict


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> list[Episode]:
    """Two recorded episodes of a tiny planner (seeds 0 and 1): 30 steps at 64x64, a second
    of video each, quick to render and encode."""
    planner, out = tiny_planner(), tmp_path_factory.mktemp("episodes")
    recorded = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUJOCO_GL", "egl")
        for seed in (0, 1):
            try:
                rec = record_episode(
                    planner,
                    seed=seed,
                    checkpoint_step=STEP,
                    out_dir=out / str(seed),
                    stem=f"R1-final-{STEP}",
                    max_steps=30,
                    width=64,
                    height=64,
                )
            except RenderUnavailable as e:
                render_unavailable(e)
            recorded.append(Episode(rec, json.loads(rec.plans.read_text())))
    return recorded


def _upload(api: httpx.Client, rid: int, attempt: int, files: dict[str, Path]) -> None:
    """PUTs the files as the worker does, each under the name it is given."""
    for name, path in files.items():
        kind = "video/webm" if name.endswith(".webm") else "application/json"
        r = api.put(
            f"/api/runs/{rid}/artifacts/{name}?attempt={attempt}",
            content=path.read_bytes(),
            headers={"Content-Type": kind},
        )
        assert r.status_code == 200, r.text


def _claimed_run(api: httpx.Client, worker: str) -> tuple[int, int]:
    """A run of the task the episodes are of, claimed (so it may upload): its id and attempt."""
    rid = create_run(api, task=TASK)["id"]
    claimed = claim_run(api, register(api, worker))
    assert claimed["run_id"] == rid
    return rid, claimed["attempt"]


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


def test_run_page_plays_the_recorded_episode_and_draws_its_plans(
    browser, live_server: LiveServer, episodes: list[Episode]
) -> None:
    episode = episodes[0]
    rec, doc = episode.recording, episode.plans
    with live_server.client() as api:
        rid, attempt = _claimed_run(api, "w")
        _upload(api, rid, attempt, {"R1-quick-500.webm": rec.video, VIDEO: rec.video, PLANS: rec.plans})
    page = login_page(browser, live_server)
    page.goto(f"{live_server.url}/runs/{rid}")
    page.wait_for_function("document.getElementById('episode-video').readyState >= 2", timeout=20_000)
    assert page.get_attribute("#episode-video", "src").endswith(f"/api/runs/{rid}/artifacts/{VIDEO}")
    assert page.get_attribute("#episode-video", "preload") == "metadata"
    assert page.evaluate("document.getElementById('episode-video').duration") == pytest.approx(
        rec.frames / rec.fps, abs=0.1
    )
    page.evaluate("document.getElementById('episode-video').play()")
    page.wait_for_function("document.getElementById('episode-video').currentTime > 0.3", timeout=20_000)
    caption = page.inner_text("#episode-caption")
    assert "R1" in caption and "step 1,000" in caption and f"episode score {doc['score']:.1f}" in caption
    assert "not one of the scored ones" in caption
    assert page.locator("#episode-pick option").all_inner_texts() == ["R1 final · step 1,000", "R1 quick · step 500"]

    page.wait_for_function("document.getElementById('plan-chart').data")
    assert [tuple(t) for t in page.evaluate(TRACES)] == _expected(doc, doc["default_dim"])
    layout = page.evaluate(
        "(() => { const l = document.getElementById('plan-chart').layout; "
        "return [l.xaxis.title.text, l.yaxis.title.text]; })()"
    )
    assert layout == ["env step", doc["dims"][doc["default_dim"]]["name"]]
    page.select_option("#plan-dim", "0")
    name = doc["dims"][0]["name"]
    page.wait_for_function(f"document.getElementById('plan-chart').layout.yaxis.title.text === {json.dumps(name)}")
    assert [tuple(t) for t in page.evaluate(TRACES)] == _expected(doc, 0)
    assert page.errors == []


def test_compare_page_plays_two_runs_videos_side_by_side(
    browser, live_server: LiveServer, episodes: list[Episode]
) -> None:
    rids = []
    with live_server.client() as api:
        for worker, episode in zip(("w1", "w2"), episodes, strict=True):
            rid, attempt = _claimed_run(api, worker)
            _upload(api, rid, attempt, {VIDEO: episode.recording.video, PLANS: episode.recording.plans})
            rids.append(rid)
    page = login_page(browser, live_server)
    page.goto(f"{live_server.url}/compare?runs={','.join(map(str, rids))}")
    figures = page.locator("#compare-videos figure[data-run-id]")
    figures.nth(1).wait_for()
    assert figures.count() == 2
    assert [figures.nth(i).get_attribute("data-run-id") for i in range(2)] == [str(r) for r in rids]
    page.wait_for_function(
        "[...document.querySelectorAll('#compare-videos .episode-score')].every(s => s.textContent !== '')"
    )
    assert figures.locator("figcaption").all_inner_texts() == [
        f"#{rid} {TASK} · R1 · step 1,000 · episode score {episode.plans['score']:.1f}"
        for rid, episode in zip(rids, episodes, strict=True)
    ]
    left, right = (figures.nth(i).bounding_box() for i in range(2))
    assert left and right and left["y"] == right["y"] and right["x"] >= left["x"] + left["width"], (left, right)

    videos = "[...document.querySelectorAll('#compare-videos video')]"
    page.wait_for_function(f"{videos}.every(v => v.readyState >= 2)", timeout=20_000)
    assert page.evaluate(f"{videos}.map(v => new URL(v.src).pathname)") == [
        f"/api/runs/{rid}/artifacts/{VIDEO}" for rid in rids
    ]
    page.evaluate(f"{videos}.forEach(v => v.play())")
    page.wait_for_function(f"{videos}.every(v => v.currentTime > 0.3)", timeout=20_000)
    assert page.errors == []
