"""Recording an episode: the video decodes to one captioned frame per state, the captions say
where the episode is, the plans kept are `plan_plain`'s for the same RNG state and the ones acted
on, their times follow the level strides, the states are the environment's, training's RNG is
untouched, and no GL means RenderUnavailable with the fix and no file.

A machine that cannot render skips these tests, except in CI (CI set) or where
DLITE_REQUIRE_GL=1 (scripts/test.sh): there a missing OpenGL fails them, so a broken setup
never passes as a row of skips."""

from __future__ import annotations

import gc
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from dlite import record
from dlite.config import from_dict
from dlite.evaluate import make_env, seeded_planning
from dlite.model import DiffuserLite
from dlite.planner import Planner
from dlite.record import Recording, RenderUnavailable, record_episode
from dlite.tasks import DOMAINS, get_task
from tests.conftest import TINY

SEED, STEPS, SIZE, DECISIONS = 5, 30, 96, 4


@dataclass
class Recorded:
    planner: Planner
    recording: Recording
    plans: dict
    rng_after: torch.Tensor
    captions: list[list[str]]
    """Each frame's caption, in the order the frames were shot."""
    rng_at_decisions: list[torch.Tensor]
    """The planning RNG's state as each kept decision began planning."""


def render_unavailable(error: RenderUnavailable) -> NoReturn:
    """Skips a test that needs rendering on a machine without OpenGL, but fails it in CI or
    where DLITE_REQUIRE_GL=1, which install what rendering needs: there it is a broken setup."""
    if os.environ.get("CI") or os.environ.get("DLITE_REQUIRE_GL") == "1":
        pytest.fail(f"rendering is required here (CI or DLITE_REQUIRE_GL=1): {error}")
    pytest.skip(str(error))


def tiny_planner() -> Planner:
    """A tiny model with random weights and a non-trivial normaliser, so denormalising matters."""
    torch.manual_seed(0)
    cfg = from_dict(TINY)
    model = DiffuserLite(cfg, 17, 6)
    with torch.no_grad():
        cast(torch.Tensor, model.obs_mean).copy_(torch.randn(17))
        cast(torch.Tensor, model.obs_std).copy_(torch.rand(17) + 0.5)
        for p in [*model.ema_levels.parameters(), *model.invdyn.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    return Planner(model, cfg)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    planner = tiny_planner()
    captions: list[list[str]] = []
    rng_at_decisions: list[torch.Tensor] = []
    caption_lines, planned_action = record._caption_lines, record._planned_action

    def captioned(*args: Any) -> list[str]:
        captions.append(caption_lines(*args))
        return captions[-1]

    def planned(planner: Planner, obs: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        rng_at_decisions.append(torch.get_rng_state())
        return planned_action(planner, obs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUJOCO_GL", "egl")
        mp.setattr(record, "_caption_lines", captioned)
        mp.setattr(record, "_planned_action", planned)
        torch.manual_seed(7)
        try:
            rec = record_episode(
                planner,
                seed=SEED,
                checkpoint_step=1234,
                out_dir=tmp_path_factory.mktemp("rec"),
                stem="final",
                max_steps=STEPS,
                width=SIZE,
                height=SIZE,
                plan_decisions=DECISIONS,
            )
        except RenderUnavailable as e:
            render_unavailable(e)
        rng_after = torch.rand(3)
    return Recorded(planner, rec, json.loads(rec.plans.read_text()), rng_after, captions, rng_at_decisions)


def _frames(path: Path) -> tuple[dict, list[np.ndarray]]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return meta, [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]


def test_the_video_is_vp9_with_one_frame_per_state(recorded: Recorded) -> None:
    rec = recorded.recording
    meta, frames = _frames(rec.video)
    assert meta["codec"] == "vp9" and meta["pix_fmt"].startswith("yuv420p")
    assert rec.steps == STEPS and rec.frames == STEPS + 1 == len(frames)
    assert frames[0].shape == (SIZE, SIZE, 3) and (rec.width, rec.height, rec.fps) == (SIZE, SIZE, 30)
    assert rec.video.name == "final.webm" and rec.plans.name == "final.plans.json"
    assert sorted(p.name for p in rec.video.parent.iterdir()) == ["final.plans.json", "final.webm"]
    assert min(rec.render_s, rec.encode_s, rec.plan_s) > 0


def test_frames_carry_the_caption(recorded: Recorded, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "egl")
    env = record._render_env(get_task(recorded.planner.cfg.task).domain, STEPS, SIZE, SIZE)
    env.reset(seed=SEED)
    bare = cast(np.ndarray, env.render()).astype(int)  # rgb_array mode: one frame
    env.close()
    first = _frames(recorded.recording.video)[1][0].astype(int)
    diff = np.abs(first - bare).mean(axis=(1, 2))
    assert diff[:8].mean() > 30  # the darkened band with white text
    assert diff[SIZE // 2 :].mean() < 8  # below it, the same picture up to VP9's loss


def test_captions_say_the_step_return_score_variant_and_checkpoint() -> None:
    task = get_task("halfcheetah-medium-expert-v2")  # D4RL's random -280.18 and expert 12135.0
    assert record._caption_lines(task, "R2", 1_234_567, 7, 1234.56) == [
        "step 7   return 1234.6   score 12.2",
        "R2   checkpoint 1,234,567",
    ]
    assert record._caption_lines(task, "R1", 0, 0, -280.178953) == [
        "step 0   return -280.2   score 0.0",
        "R1   checkpoint 0",
    ]


def test_each_frame_is_captioned_with_its_step_and_the_return_so_far(recorded: Recorded) -> None:
    captions, rec = recorded.captions, recorded.recording
    assert len(captions) == rec.frames
    assert [c[0].split("   ")[0] for c in captions] == [f"step {t}" for t in range(STEPS + 1)]
    assert captions[0] == ["step 0   return 0.0   score 2.3", "R1   checkpoint 1,234"]  # halfcheetah's 0 is 2.3
    task = get_task(recorded.planner.cfg.task)
    assert captions[-1] == record._caption_lines(task, "R1", 1234, STEPS, rec.episode_return)


def test_every_kept_decisions_plans_are_plan_plains_for_the_same_rng_state(recorded: Recorded) -> None:
    """Each decision is replanned from the RNG state the episode had when it planned it (the
    `act` calls between decisions move the RNG on) and the state it was at."""
    planner, plans = recorded.planner, recorded.plans
    decisions = plans["decisions"]
    assert len(decisions) == len(recorded.rng_at_decisions) == DECISIONS
    for decision, rng in zip(decisions, recorded.rng_at_decisions):
        obs = np.array(plans["states"][decision["t"]])
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.set_rng_state(rng)
            expected = planner.plan_plain(planner.model.normalize(torch.as_tensor(obs[None], dtype=torch.float32)))
        assert [lv["level"] for lv in decision["levels"]] == [0, 1, 2]
        for level, plan in zip(decision["levels"], expected, strict=True):
            np.testing.assert_allclose(
                level["points"], planner.model.denormalize(plan[0]).numpy(), rtol=1e-5, atol=1e-5
            )
        np.testing.assert_allclose(decision["levels"][0]["points"][0], obs, rtol=1e-5, atol=1e-5)
    first = recorded.rng_at_decisions[0]
    with seeded_planning(planner, SEED):
        assert torch.equal(first, torch.get_rng_state()), "decision 0 plans right after the seeding"


def test_decisions_are_spread_and_times_follow_each_levels_stride(recorded: Recorded) -> None:
    decisions = recorded.plans["decisions"]
    assert [d["t"] for d in decisions] == [0, 10, 19, 29]  # linspace(0, 29, 4), rounded
    assert recorded.planner.cfg.spans == (129, 33, 9)
    for d in decisions:
        t = d["t"]
        times = [lv["times"] for lv in d["levels"]]
        assert times == [
            [t + k for k in range(0, 129, 32)],
            [t + k for k in range(0, 33, 8)],
            [t + k for k in range(9)],
        ]
        assert [len(lv["points"]) for lv in d["levels"]] == [5, 5, 9]


def test_states_are_the_environments_and_the_plans_are_acted_on(recorded: Recorded) -> None:
    """Replays the episode: plan_plain's action at the kept decisions, `act` elsewhere."""
    planner, plans = recorded.planner, recorded.plans
    task = get_task(planner.cfg.task)
    kept = {d["t"] for d in plans["decisions"]}
    env = make_env(task.domain, STEPS)
    states, total = [], 0.0
    with seeded_planning(planner, SEED), torch.no_grad():
        obs, _ = env.reset(seed=SEED)
        states.append(obs)
        for t in range(STEPS):
            if t in kept:
                finest = planner.plan_plain(planner.model.normalize(torch.as_tensor(obs[None], dtype=torch.float32)))[
                    -1
                ]
                action = planner.model.invdyn(finest[:, 0], finest[:, 1])[0].numpy()
            else:
                action = planner.act(obs[None])[0]
            obs, reward, *_ = env.step(action)
            states.append(obs)
            total += float(reward)
    np.testing.assert_array_equal(np.array(plans["states"]), np.array(states))
    assert plans["episode_return"] == pytest.approx(total) == recorded.recording.episode_return
    assert plans["score"] == pytest.approx(task.normalized_score(total)) == recorded.recording.score


def test_plans_json_names_every_dimension(recorded: Recorded) -> None:
    plans = recorded.plans
    assert {k: plans[k] for k in ("version", "task", "variant", "checkpoint_step", "seed", "default_dim")} == {
        "version": 1,
        "task": "halfcheetah-medium-expert-v2",
        "variant": "R1",
        "checkpoint_step": 1234,
        "seed": SEED,
        "default_dim": 8,
    }
    assert [d["index"] for d in plans["dims"]] == list(range(17))
    assert "x-coordinate" in plans["dims"][8]["name"] and "velocity" in plans["dims"][8]["name"]
    assert all(len(record.OBS_NAMES[name]) == d.obs_dim for name, d in DOMAINS.items())


def test_recording_leaves_the_callers_rng_alone(recorded: Recorded) -> None:
    torch.manual_seed(7)
    assert torch.equal(recorded.rng_after, torch.rand(3))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Gymnasium's half-made viewer's __del__
def test_no_gl_raises_render_unavailable_with_the_fix_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUJOCO_GL", "disable")
    with pytest.raises(RenderUnavailable) as caught:
        record_episode(
            tiny_planner(), seed=0, checkpoint_step=0, out_dir=tmp_path, stem="x", max_steps=3, width=32, height=32
        )
    message = str(caught.value)
    assert all(
        fix in message
        for fix in (
            "MUJOCO_GL=egl",
            "libegl1",
            "libgl1-mesa-dri",
            "MUJOCO_GL=osmesa",
            "libosmesa6",
            "MUJOCO_GL=disable",
        )
    )
    assert list(tmp_path.iterdir()) == []
    del caught
    gc.collect()  # that __del__ runs here, where its warning is ignored
