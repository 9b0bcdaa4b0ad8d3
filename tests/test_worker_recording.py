"""worker.recording: which evaluations are filmed, and that filming one never shows in its
planning figures (the evaluation is timed before its episode is recorded, and the recording
times its planning apart from its frames)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dlite import record
from dlite.config import from_dict
from dlite.model import DiffuserLite
from dlite.record import RenderUnavailable
from tests.app_helpers import start_server, stop_server, wait_for_claim
from tests.conftest import TINY
from tests.test_dlite_record import render_unavailable
from tests.test_worker_e2e import TASK, tiny_run_config
from worker import recording
from worker.client import ServerClient
from worker.executor import RunExecutor

EVAL_EVERY = 100


def filmed(record_video: str, video_every_quick: int, kind: str, steps: range) -> list[int]:
    cfg = from_dict(
        {**TINY, "eval_every": EVAL_EVERY, "record_video": record_video, "video_every_quick": video_every_quick}
    )
    return [step for step in steps if recording.wanted(cfg, step, kind)]


QUICK = range(EVAL_EVERY, 10 * EVAL_EVERY, EVAL_EVERY)
"""The steps of a run's quick evaluations: 100, 200, ... 900."""


def test_off_films_nothing() -> None:
    assert filmed("off", 0, "final", range(1000, 1001)) == []
    assert filmed("off", 3, "final", range(1000, 1001)) == []
    assert filmed("off", 3, "quick", QUICK) == [], "off wins over video_every_quick"


def test_final_films_every_final_evaluation_and_no_quick_one() -> None:
    assert filmed("final", 0, "final", range(1000, 1001)) == [1000]
    assert filmed("final", 0, "final", range(37, 38)) == [37], "a final evaluation at any step"
    assert filmed("final", 0, "quick", QUICK) == []


@pytest.mark.parametrize("k, expected", [(1, list(QUICK)), (3, [300, 600, 900]), (4, [400, 800]), (10, [])])
def test_video_every_quick_films_every_kth_quick_evaluation(k: int, expected: list[int]) -> None:
    """Counted in quick evaluations (step / eval_every): the 3rd, 6th and 9th when k is 3."""
    assert filmed("final", k, "quick", QUICK) == expected
    assert filmed("final", k, "final", range(1000, 1001)) == [1000], "the final one is filmed as before"


FRAME_S = 100.0
"""What each frame costs to render here, on a clock that jumps by it rather than waiting: any
of it in a planning figure would dwarf a tiny model's planning time many times over."""
STEPS = 5


def test_rendering_time_stays_out_of_the_planning_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every frame made slow, the evaluation's latency and the recording's planning time
    stay a tiny model's; only the rendering time grows."""
    monkeypatch.setenv("MUJOCO_GL", "egl")
    draw_caption, perf_counter = record._draw_caption, time.perf_counter
    rendered = [0.0]

    def slow_caption(frame: np.ndarray, lines: list[str]) -> None:
        rendered[0] += FRAME_S
        draw_caption(frame, lines)

    monkeypatch.setattr(record, "_draw_caption", slow_caption)
    monkeypatch.setattr(time, "perf_counter", lambda: perf_counter() + rendered[0])
    server = start_server(tmp_path / "server")
    try:
        api = server.client()
        config = {**tiny_run_config(100), "max_episode_steps": STEPS}
        run_id = api.post("/api/runs", json={"task": TASK, "name": "timed", "config": config}).json()["id"]
        client = ServerClient(server.url, server.token)
        claimed = wait_for_claim(client, client.register("w", "h", "cpu", None))
        executor = RunExecutor(client, claimed, tmp_path / "vm", "cpu", None, threading.Event())
        try:
            planner = executor.planner(DiffuserLite(executor.cfg, 17, 6), executor.cfg, "R1")
            _, recorded = executor.report_evaluation(planner, 100, "final", 2, 1)
            assert executor.outbox.flush(timeout=30)
        finally:
            executor.heartbeat.stop()
            executor.outbox.close(timeout=10)
        run = api.get(f"/api/runs/{run_id}").json()
        if not recorded:
            video = next(i for i in run["checklist"] if i["key"] == "eval.video")
            render_unavailable(RenderUnavailable(video["detail"]))
        events = [e["message"] for e in api.get(f"/api/runs/{run_id}/events").json()]
    finally:
        stop_server(server)

    [evaluation] = run["evaluations"]
    assert 0 < evaluation["latency_ms"] < 1000 * FRAME_S and 0 < evaluation["latency_ms_1env"] < 1000 * FRAME_S
    [message] = [m for m in events if m.startswith("recorded an extra R1 episode of step 100 (final)")]
    timing = re.search(r"rendering ([\d.]+) s, encoding ([\d.]+) s, planning ([\d.]+) s", message)
    assert timing, message
    rendering, _, planning = map(float, timing.groups())
    assert rendering >= (STEPS + 1) * FRAME_S, "every frame, the reset's too, paid the slow rendering"
    assert planning < FRAME_S, "planning took none of it"
