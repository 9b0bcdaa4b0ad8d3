"""One extra evaluation episode as a video, with the coarse-to-fine plans of a few decisions,
for the run page: what the planner did, and what it meant to do.

The episode is not one of the scored ones: its own environment (made as evaluation makes
them, with a renderer) and its planning noise from a forked, seeded RNG, so recording never
changes training or evaluation. Frames stream into ffmpeg as they are rendered: 1000 frames
of 480x480 held in memory would be 690 MB.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import imageio_ffmpeg
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dlite.evaluate import make_env, seeded_planning
from dlite.files import atomic_path
from dlite.planner import Planner
from dlite.tasks import Domain, Task, get_task

PLANS_VERSION = 1

_CHEETAH = (
    "z-coordinate of the front tip (m)",
    "angle of the front tip (rad)",
    "angle of the back thigh (rad)",
    "angle of the back shin (rad)",
    "angle of the back foot (rad)",
    "angle of the front thigh (rad)",
    "angle of the front shin (rad)",
    "angle of the front foot (rad)",
    "velocity of the x-coordinate of the front tip (m/s)",
    "velocity of the z-coordinate of the front tip (m/s)",
    "angular velocity of the front tip (rad/s)",
    "angular velocity of the back thigh (rad/s)",
    "angular velocity of the back shin (rad/s)",
    "angular velocity of the back foot (rad/s)",
    "angular velocity of the front thigh (rad/s)",
    "angular velocity of the front shin (rad/s)",
    "angular velocity of the front foot (rad/s)",
)
_HOPPER = (
    "z-coordinate of the torso (height of hopper) (m)",
    "angle of the torso (rad)",
    "angle of the thigh joint (rad)",
    "angle of the leg joint (rad)",
    "angle of the foot joint (rad)",
    "velocity of the x-coordinate of the torso (m/s)",
    "velocity of the z-coordinate of the torso (m/s)",
    "angular velocity of the torso (rad/s)",
    "angular velocity of the thigh hinge (rad/s)",
    "angular velocity of the leg hinge (rad/s)",
    "angular velocity of the foot hinge (rad/s)",
)
_WALKER = (
    "z-coordinate of the torso (height of walker2d) (m)",
    "angle of the torso (rad)",
    "angle of the thigh joint (rad)",
    "angle of the leg joint (rad)",
    "angle of the foot joint (rad)",
    "angle of the left thigh joint (rad)",
    "angle of the left leg joint (rad)",
    "angle of the left foot joint (rad)",
    "velocity of the x-coordinate of the torso (m/s)",
    "velocity of the z-coordinate of the torso (m/s)",
    "angular velocity of the torso (rad/s)",
    "angular velocity of the thigh hinge (rad/s)",
    "angular velocity of the leg hinge (rad/s)",
    "angular velocity of the foot hinge (rad/s)",
    "angular velocity of the left thigh hinge (rad/s)",
    "angular velocity of the left leg hinge (rad/s)",
    "angular velocity of the left foot hinge (rad/s)",
)
OBS_NAMES: dict[str, tuple[str, ...]] = {"halfcheetah": _CHEETAH, "hopper": _HOPPER, "walker2d": _WALKER}
"""Every observation dimension of each domain, in Gymnasium's documented order (-v4 = -v5 here)."""
DEFAULT_DIM = {"halfcheetah": 8, "hopper": 0, "walker2d": 0}
"""The dimension a plan chart shows first: what the reward pays for (forward velocity) or what
ends an episode (the torso's height)."""

_VP9 = ["-f", "webm", "-crf", "36", "-b:v", "0", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1"]
"""Constant quality at realtime speed: the temporary file's name says nothing of the format,
hence -f; crf 36 keeps the captions sharp and 1000 frames at 480x480 at a few MB."""


@dataclass(frozen=True)
class Recording:
    """The two files of a recorded episode and what it cost; the seconds are summed over the
    episode, so a caller can keep rendering and encoding out of its planning figures."""

    video: Path  # WebM, VP9
    plans: Path  # JSON, version PLANS_VERSION
    frames: int  # steps + 1: the state after reset, then one a step
    width: int
    height: int
    fps: int
    steps: int  # env steps of the episode
    episode_return: float
    score: float  # D4RL normalised score of this episode
    render_s: float  # rendering and captioning frames
    encode_s: float  # waiting for the encoder
    plan_s: float  # planning the actions


class RenderUnavailable(RuntimeError):
    """MuJoCo cannot render here (no OpenGL): the message says which MUJOCO_GL to set and what to install."""


@dataclass
class _Episode:
    states: list[list[float]]
    decisions: list[dict[str, Any]]
    episode_return: float
    plan_s: float


def record_episode(
    planner: Planner,
    *,
    seed: int,
    checkpoint_step: int,
    out_dir: Path,
    stem: str,
    max_steps: int | None = None,
    width: int = 480,
    height: int = 480,
    fps: int = 30,
    plan_decisions: int = 6,
) -> Recording:
    """Play one episode from `env.reset(seed=seed)` and write `stem.webm` (VP9) and `stem.plans.json`
    in `out_dir`, each atomically. `plan_decisions` decisions spread over the episode act on
    `plan_plain`'s plans, so the plans kept are the ones acted on; the others use `planner.act`."""
    if plan_decisions < 1:
        raise ValueError(f"plan_decisions must be at least 1 (decision 0 is always kept), got {plan_decisions}")
    task = get_task(planner.cfg.task)
    max_steps = max_steps or planner.cfg.max_episode_steps
    planned = set(np.linspace(0, max_steps - 1, plan_decisions).round().astype(int).tolist())
    video, plans = out_dir / f"{stem}.webm", out_dir / f"{stem}.plans.json"
    env = _render_env(task.domain, max_steps, width, height)
    try:
        caption = functools.partial(_caption_lines, task, planner.variant, checkpoint_step)
        with (
            seeded_planning(planner, seed),
            atomic_path(video) as tmp,
            closing(_Camera(env, tmp, fps, caption)) as camera,
        ):
            episode = _play(planner, env, seed, max_steps, planned, camera.shoot)
    finally:
        env.close()
    score = task.normalized_score(episode.episode_return)
    with atomic_path(plans) as tmp:
        tmp.write_text(json.dumps(_plans_json(planner, task, checkpoint_step, seed, episode, score)))
    return Recording(
        video,
        plans,
        camera.frames,
        width,
        height,
        fps,
        len(episode.states) - 1,
        episode.episode_return,
        score,
        camera.render_s,
        camera.encode_s,
        episode.plan_s,
    )


def _unavailable(gym_id: str, error: BaseException) -> RenderUnavailable:
    backend = os.environ.get("MUJOCO_GL", "unset")
    return RenderUnavailable(
        f"cannot render {gym_id} with MUJOCO_GL={backend} ({type(error).__name__}: {str(error).rstrip('.')}). "
        "Set MUJOCO_GL=egl (on Debian install libegl1 and libgl1-mesa-dri: Mesa's software EGL needs no GPU) "
        "or MUJOCO_GL=osmesa (install libosmesa6), or record no video."
    )


def _render_env(domain: Domain, max_steps: int, width: int, height: int) -> gym.Env:
    """The environment evaluation steps, filmed by its model's own camera ("track", which follows
    the body: Gymnasium 1.x's default view of HalfCheetah-v4 stays put while the cheetah runs out
    of it), without shadows: they make Mesa's software renderer 2.5x slower (and streak the
    floor). MuJoCo's GL backend is chosen when the environment is made, so a missing library
    fails here or at the first render."""
    try:
        env = make_env(domain, max_steps, render_mode="rgb_array", width=width, height=height, camera_name="track")
    except Exception as e:  # the backend's import and context errors: RuntimeError, AttributeError, ImportError
        raise _unavailable(domain.gym_id, e) from e
    # read when the first render makes the GL context; `model` is MujocoEnv's, not in gym.Env's stub
    env.unwrapped.model.vis.quality.shadowsize = 0  # type: ignore[attr-defined]
    return env


class _Camera:
    """Renders, captions and feeds each frame to ffmpeg, timing rendering and encoding apart.
    ffmpeg encodes in its own process: `encode_s` is the time spent waiting for it. It starts
    at the first frame, so a renderer that cannot start leaves no ffmpeg and no file behind."""

    def __init__(self, env: gym.Env, path: Path, fps: int, caption: Callable[[int, float], list[str]]) -> None:
        self.env, self.path, self.fps, self.caption = env, path, fps, caption
        self.frames = 0
        self.render_s = self.encode_s = 0.0
        self._writer: Any = None

    def close(self) -> None:
        if self._writer is not None:
            t0 = time.perf_counter()
            self._writer.close()  # waits for ffmpeg to finish the file
            self.encode_s += time.perf_counter() - t0

    def shoot(self, t: int, episode_return: float) -> None:
        t0 = time.perf_counter()
        try:
            frame = cast(np.ndarray, self.env.render())  # rgb_array mode: one frame
        except Exception as e:  # no GL context: see _render_env
            raise _unavailable(getattr(self.env.spec, "id", "the environment"), e) from e
        _draw_caption(frame, self.caption(t, episode_return))
        frame = np.ascontiguousarray(frame)  # MuJoCo's frame is a flipped view; the pipe takes C order
        t1 = time.perf_counter()
        if self._writer is None:
            self._writer = imageio_ffmpeg.write_frames(
                str(self.path),
                (frame.shape[1], frame.shape[0]),
                fps=self.fps,
                codec="libvpx-vp9",
                pix_fmt_out="yuv420p",
                quality=None,
                macro_block_size=2,
                ffmpeg_log_level="error",
                output_params=_VP9,
            )
            self._writer.send(None)  # starts ffmpeg
        self._writer.send(frame)
        self.frames += 1
        self.render_s += t1 - t0
        self.encode_s += time.perf_counter() - t1


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:  # not installed: Pillow's own font
        return ImageFont.load_default(size)


def _draw_caption(frame: np.ndarray, lines: list[str]) -> None:
    """Writes `lines` on a darkened band across the top of `frame`, in place: only the band
    is copied to Pillow and back, not the frame."""
    height = frame.shape[0]
    font = _font(max(8, height // 32))
    pad = max(2, height // 120)
    text = "\n".join(lines)
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((pad, pad), text, font=font)
    band = frame[: min(height, box[3] + pad)]
    image = Image.fromarray(band // 2)
    ImageDraw.Draw(image).multiline_text((pad, pad), text, font=font, fill=(255, 255, 255))
    band[:] = np.asarray(image)


def _caption_lines(task: Task, variant: str, checkpoint_step: int, t: int, episode_return: float) -> list[str]:
    return [
        f"step {t}   return {episode_return:.1f}   score {task.normalized_score(episode_return):.1f}",
        f"{variant}   checkpoint {checkpoint_step:,}",
    ]


def _play(
    planner: Planner, env: gym.Env, seed: int, max_steps: int, planned: set[int], shoot: Callable[[int, float], None]
) -> _Episode:
    """The episode's states, kept plans, return and planning seconds: env steps and frames
    are not planning, so they stay out of `plan_s`."""
    obs, _ = env.reset(seed=seed)
    states, decisions, total, plan_s = [obs.tolist()], [], 0.0, 0.0
    shoot(0, total)
    for t in range(max_steps):
        t0 = time.perf_counter()
        action, levels = _planned_action(planner, obs) if t in planned else (planner.act(obs[None])[0], None)
        plan_s += time.perf_counter() - t0
        if levels is not None:
            decisions.append(_decision(t, levels, planner.cfg.strides))
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        states.append(obs.tolist())
        shoot(t + 1, total)
        if terminated or truncated:
            break
    return _Episode(states, decisions, total, plan_s)


@torch.no_grad()
def _planned_action(planner: Planner, obs: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The action of `act_plain` (inverse dynamics on the finest plan's first two points) and
    every level's plan, denormalised. Level l+1 refines level l between its first two points,
    so every level starts at the decision's step."""
    raw = torch.as_tensor(obs[None], dtype=torch.float32, device=planner.device)
    plans = planner.plan_plain(planner.model.normalize(raw))
    finest = plans[-1]
    action = planner.model.invdyn(finest[:, 0], finest[:, 1])[0].cpu().numpy()
    return action, [planner.model.denormalize(p[0]).cpu().numpy() for p in plans]


def _decision(t: int, levels: list[np.ndarray], strides: tuple[int, ...]) -> dict[str, Any]:
    """A decision's plans with each point's env step: level l's points lie `strides[l]` steps
    apart from the decision's step (see `_planned_action`)."""
    return {
        "t": t,
        "levels": [
            {"level": level, "times": [t + k * strides[level] for k in range(len(points))], "points": points.tolist()}
            for level, points in enumerate(levels)
        ],
    }


def _plans_json(
    planner: Planner, task: Task, checkpoint_step: int, seed: int, episode: _Episode, score: float
) -> dict[str, Any]:
    domain = task.domain.name
    return {
        "version": PLANS_VERSION,
        "task": task.name,
        "variant": planner.variant,
        "checkpoint_step": checkpoint_step,
        "seed": seed,
        "dims": [{"index": i, "name": name} for i, name in enumerate(OBS_NAMES[domain])],
        "default_dim": DEFAULT_DIM[domain],
        "states": episode.states,
        "decisions": episode.decisions,
        "episode_return": episode.episode_return,
        "score": score,
    }
