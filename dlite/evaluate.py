"""Scoring a planner on Gymnasium's -v4 MuJoCo environments with the D4RL score."""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from dlite.planner import Planner
from dlite.tasks import Domain, get_task


@dataclass
class EvalResult:
    """Per-episode returns and scores (std over episodes, population std) and planning
    speed: ms per decision for the whole batch of environments and for one environment,
    the figure the paper reports in Hz."""

    task: str
    variant: str
    returns: list[float]
    scores: list[float]
    score_mean: float
    score_std: float
    n_envs: int
    n_episodes: int
    latency_ms: float
    latency_ms_1env: float
    device: str
    wall_s: float

    @property
    def decisions_per_s(self) -> float:
        """Environment decisions per second with the whole batch planned at once."""
        return 1000.0 * self.n_envs / self.latency_ms

    @property
    def hz_1env(self) -> float:
        return 1000.0 / self.latency_ms_1env

    def to_dict(self) -> dict:
        return asdict(self)


def device_name(device: torch.device) -> str:
    """What a speed was measured on: the GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()}, {torch.get_num_threads()} threads"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def one_env_latency_ms(planner: Planner, obs: np.ndarray, repeats: int = 30) -> float:
    """Median ms of one decision for a single environment (after a warm-up)."""
    times = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        planner.act(obs[:1])
        if planner.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def make_env(domain: Domain, max_steps: int, **render: Any) -> gym.Env:
    """One environment as evaluation steps it; `render` (render_mode, width, height) makes
    a recorded episode one that evaluation could have scored."""
    return gym.make(domain.gym_id, max_episode_steps=max_steps, **render)


def make_envs(domain: Domain, n_envs: int, max_steps: int) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv([lambda: make_env(domain, max_steps)] * n_envs)


@contextmanager
def seeded_planning(planner: Planner, seed: int) -> Iterator[None]:
    """Planning noise from a forked RNG seeded with `seed`: an evaluation (or a recording)
    in the middle of training leaves the training run exactly as it would have been without it."""
    devices = [planner.device] if planner.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def evaluate(planner: Planner, n_envs: int, n_episodes: int, seed: int = 0, max_steps: int | None = None) -> EvalResult:
    """Run n_envs environments in lock-step for n_episodes rounds.

    An environment that is done stops adding reward; Gymnasium 1.x autoresets it on
    the next step, which we ignore, so each round is exactly one episode per env.
    Planning noise comes from a forked, seeded RNG (`seeded_planning`).
    """
    task = get_task(planner.cfg.task)
    domain = task.domain
    max_steps = max_steps or planner.cfg.max_episode_steps
    if domain.obs_dim != planner.model.obs_dim or domain.act_dim != planner.model.act_dim:
        raise ValueError(
            f"the checkpoint plans for obs/act sizes {planner.model.obs_dim}/{planner.model.act_dim}, "
            f"but {domain.gym_id} has {domain.obs_dim}/{domain.act_dim}"
        )
    start = time.perf_counter()
    envs = make_envs(domain, n_envs, max_steps)
    with seeded_planning(planner, seed):
        returns, latency_ms, obs = _rollouts(planner, envs, n_envs, n_episodes, seed, max_steps)
        latency_1env = one_env_latency_ms(planner, obs)
    scores = [task.normalized_score(r) for r in returns]
    return EvalResult(
        task.name,
        planner.variant,
        returns,
        scores,
        float(np.mean(scores)),
        float(np.std(scores)),
        n_envs,
        n_episodes,
        latency_ms,
        latency_1env,
        device_name(planner.device),
        time.perf_counter() - start,
    )


def _rollouts(
    planner: Planner, envs: gym.vector.VectorEnv, n_envs: int, n_episodes: int, seed: int, max_steps: int
) -> tuple[list[float], float, np.ndarray]:
    """Per-episode returns, the median planning latency (ms) of a decision for the batch,
    and the last observations (real states to time one-environment planning on). The first
    decision is left out of the latency: it pays for compilation or CUDA-graph capture."""
    returns: list[float] = []
    plan_times: list[float] = []
    try:
        for episode in range(n_episodes):
            obs, _ = envs.reset(seed=seed + episode * n_envs)
            total = np.zeros(n_envs)
            alive = np.ones(n_envs, dtype=bool)
            for _ in range(max_steps):
                t0 = time.perf_counter()
                action = planner.act(obs)
                if planner.device.type == "cuda":
                    torch.cuda.synchronize()
                plan_times.append(time.perf_counter() - t0)
                obs, reward, terminated, truncated, _ = envs.step(action)
                total += reward * alive
                alive &= ~(terminated | truncated)
                if not alive.any():
                    break
            returns.extend(total.tolist())
    finally:
        envs.close()
    return returns, 1000 * float(np.median(plan_times[1:] or plan_times)), obs
