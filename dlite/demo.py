"""The no-download demo: a small HalfCheetah dataset made locally and tiny settings,
so the whole stage checklist, R2's reflow included, runs on a laptop CPU in minutes."""

from __future__ import annotations

from pathlib import Path

from dlite.d4rl import cache_dir
from dlite.synthetic import rollouts, write_hdf5

DEMO_TASK = "halfcheetah-medium-expert-v2"
DEMO_OVERRIDES: dict[str, object] = {
    "emb_dim": 64,
    "d_model": 64,
    "n_heads": 4,
    "depth": 1,
    "invdyn_hidden": 128,
    "batch_size": 64,
    "diffusion_lr": 1e-3,
    "diffusion_gradient_steps": 3000,
    "invdyn_gradient_steps": 3000,
    "log_interval": 100,
    "save_interval": 500,
    "smoke_steps": 100,
    "eval_every": 1000,
    "eval_envs": 4,
    "eval_episodes": 1,
    "num_envs": 10,
    "num_episodes": 1,
    "max_episode_steps": 250,
    "backup_every": 1000,
    "keep_every": 1000,
    "variant": "R2",
    "reflow_pairs_cond": 8000,
    "reflow_pairs_uncond": 2000,
    "reflow_pair_batch": 2000,
    "reflow_gradient_steps": 1000,
}


def demo_dataset(folder: Path | None = None) -> Path:
    """Scripted-gait HalfCheetah rollouts in D4RL format, made once and cached."""
    path = (folder or cache_dir()) / "demo_halfcheetah_gait-v2.hdf5"
    if not path.exists():
        write_hdf5(path, rollouts("halfcheetah", n_episodes=20, length=1000, policy="gait", seed=0))
    return path
