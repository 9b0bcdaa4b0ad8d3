"""Small D4RL-format datasets made locally from real MuJoCo rollouts.

Tests and the no-download demo need data with the exact D4RL layout; a scripted
periodic gait with noise gives the demo something better than random to imitate.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np

from dlite.d4rl import KEYS, RawDataset, load
from dlite.files import atomic_path
from dlite.tasks import domain_of


def write_hdf5(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write the five D4RL arrays atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


def rollouts(
    task: str, n_episodes: int, length: int, policy: str = "random", seed: int = 0, terminal_episode: int | None = None
) -> dict[str, np.ndarray]:
    """Roll `policy` ('random' or 'gait') in the task's -v4 env.

    Every episode ends on a timeout after `length` steps, except `terminal_episode`,
    which is cut at half length and marked terminal, as a fall would be.
    """
    domain = domain_of(task)
    env = gym.make(domain.gym_id)
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {k: [] for k in KEYS}
    for ep in range(n_episodes):
        obs, _ = env.reset(seed=seed + ep)
        steps = length // 2 if ep == terminal_episode else length
        phase = rng.uniform(0, 2 * np.pi, domain.act_dim)
        for t in range(steps):
            if policy == "gait":
                action = np.sin(0.6 * t + phase) + 0.3 * rng.standard_normal(domain.act_dim)
            else:
                action = rng.uniform(-1, 1, domain.act_dim)
            action = np.clip(action, -1, 1).astype(np.float32)
            next_obs, reward, terminated, _, _ = env.step(action)
            last = t == steps - 1
            out["observations"].append(obs)
            out["actions"].append(action)
            out["rewards"].append(reward)
            out["terminals"].append(bool(terminated) or (last and ep == terminal_episode))
            out["timeouts"].append(last and ep != terminal_episode)
            obs = next_obs
            if terminated:
                break
    env.close()
    return {
        "observations": np.asarray(out["observations"], np.float32),
        "actions": np.asarray(out["actions"], np.float32),
        "rewards": np.asarray(out["rewards"], np.float32),
        "terminals": np.asarray(out["terminals"], bool),
        "timeouts": np.asarray(out["timeouts"], bool),
    }


def random_dataset(path: Path, obs_dim: int, act_dim: int, episodes: int, seed: int = 0) -> RawDataset:
    """Random D4RL data of full 1000-step episodes, written to `path` and read back, no simulator
    needed: what a speed measurement trains and plans on (its cost depends on shapes, not on
    content)."""
    rng = np.random.default_rng(seed)
    n = episodes * 1000
    timeouts = np.zeros(n, bool)
    timeouts[999::1000] = True
    return load(
        write_hdf5(
            path,
            {
                "observations": rng.standard_normal((n, obs_dim), dtype=np.float32),
                "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
                "rewards": rng.standard_normal(n, dtype=np.float32),
                "terminals": np.zeros(n, bool),
                "timeouts": timeouts,
            },
        )
    )
