"""Shared fixtures: tiny D4RL-format data made from real HalfCheetah-v4 steps, tiny configs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "disable")

pytest_plugins = ["tests.app_helpers"]  # the server fixtures: settings, client, live_server

TINY = {
    "emb_dim": 32,
    "d_model": 32,
    "n_heads": 2,
    "depth": 1,
    "batch_size": 16,
    "invdyn_hidden": 32,
    "diffusion_gradient_steps": 40,
    "invdyn_gradient_steps": 40,
    "log_interval": 10,
    "save_interval": 20,
    "keep_local": 10,
}


@pytest.fixture(scope="session")
def tiny_hdf5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 160-step episodes of random HalfCheetah-v4 actions; the third ends on a terminal."""
    from dlite.synthetic import rollouts, write_hdf5

    path = tmp_path_factory.mktemp("data") / "halfcheetah_tiny-v2.hdf5"
    return write_hdf5(path, rollouts("halfcheetah", n_episodes=4, length=160, terminal_episode=2))


@pytest.fixture
def tiny_overrides() -> dict:
    return dict(TINY)


@pytest.fixture
def dataset_cache(tmp_path: Path, tiny_hdf5: Path) -> Path:
    """The tiny file under the task's D4RL name: the worker's data stage finds it in the cache."""
    cache = tmp_path / "datasets"
    cache.mkdir()
    shutil.copy(tiny_hdf5, cache / "halfcheetah_medium_expert-v2.hdf5")
    return cache
