"""Any number of plan levels, end to end at tiny sizes: 2 and 4 levels train, resume
bit-exactly, reflow, plan (fast path = textbook loop) and evaluate; configs that cannot
work are refused when they are made, naming the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dlite import checkpoint, d4rl
from dlite.config import ConfigErrors, from_dict
from dlite.dataset import WindowDataset
from dlite.evaluate import evaluate
from dlite.planner import Planner
from dlite.reflow import PairSpec, PairStore, ReflowTrainer, load_r1
from dlite.train import Trainer
from tests.conftest import TINY

LEVELS = {2: [3, 9], 4: [3, 3, 3, 5]}
"""Small horizons of 2 and 4 levels (spans 17/9 and 33/17/9/5) that fit the tiny episodes."""


def test_spans_follow_the_references_rule_for_any_number_of_levels() -> None:
    spans = {
        tuple(h): from_dict({"horizons": h}).spans
        for h in ([5, 9], [9, 17], [5, 5, 9], [5, 3, 5, 5], [3, 5, 17], [9, 5, 5], [17, 5, 3])
    }
    assert spans == {
        (5, 9): (33, 9),
        (9, 17): (129, 17),
        (5, 5, 9): (129, 33, 9),
        (5, 3, 5, 5): (129, 33, 17, 5),
        (3, 5, 17): (129, 65, 17),
        (9, 5, 5): (129, 17, 5),
        (17, 5, 3): (129, 9, 3),
    }


@pytest.mark.parametrize(
    ("horizons", "says"),
    [
        ([5, 2, 9], "needs at least 3 points"),
        ([9, 2], "needs at least 3 points"),
        ([129, 129], "longer than a D4RL episode"),
    ],
)
def test_configs_that_cannot_work_are_refused_naming_horizons(horizons: list[int], says: str, client) -> None:
    with pytest.raises(ConfigErrors, match=says) as info:
        from_dict({"horizons": horizons})
    assert [field for field, _ in info.value.errors] == ["horizons"]
    r = client.post("/api/runs", json={"task": "hopper-medium-v2", "config": {"horizons": horizons}})
    assert r.status_code == 422 and "horizons" in r.text and says in r.text


@pytest.mark.parametrize("levels", sorted(LEVELS))
def test_train_resume_reflow_plan_and_evaluate(levels: int, tiny_hdf5: Path, tmp_path: Path) -> None:
    cfg = from_dict(
        {
            **TINY,
            "horizons": LEVELS[levels],
            "variant": "R2",
            "ema_rate": 0.5,
            "diffusion_lr": 3e-3,
            "reflow_pairs_cond": 24,
            "reflow_pairs_uncond": 8,
            "reflow_pair_batch": 16,
            "reflow_pair_steps": 2,
            "reflow_gradient_steps": 10,
            "max_episode_steps": 15,
        }
    )
    data = WindowDataset(d4rl.load(tiny_hdf5), cfg)
    assert len(data.starts) == levels

    straight = Trainer(cfg, data, tmp_path / "straight")
    straight.fit()
    keys = [f"loss{i}" for i in range(levels)]
    losses = straight.read_losses()
    assert list(losses) == keys + ["invdyn_loss"] and all(np.isfinite(v) for v in losses.values())
    Trainer(cfg, data, tmp_path / "split").fit(until=20)
    again = Trainer(cfg, data, tmp_path / "split")
    assert again.resume_latest() is not None and again.step == 20
    again.fit()
    a, b = (checkpoint.read(tmp_path / run / "ckpt_00000040.pt") for run in ("straight", "split"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), f"resume is not bit-exact at {key}"

    path = tmp_path / "straight" / "ckpt_00000040.pt"
    r1 = load_r1(checkpoint.read(path), cfg, data, path)
    store = PairStore(tmp_path / "pairs", PairSpec.of(cfg, r1, data))
    store.generate(r1, data)
    reflow = ReflowTrainer(cfg, data, store, r1, 40, tmp_path / "r2")
    reflow.fit()
    assert list(reflow.read_losses()) == keys and reflow.step == 50

    obs = np.random.default_rng(0).normal(size=(3, data.obs_dim)).astype(np.float32)
    for variant, source in (("R1", path), ("R2", tmp_path / "r2" / "ckpt_00000050.pt")):
        planner = Planner.from_checkpoint(source)
        assert planner.variant == variant
        with torch.no_grad():  # trained for 40 steps the levels are near zero: move them so the test can see
            for p in planner.model.ema_levels.parameters():
                p.add_(0.05 * torch.randn_like(p))
        planner = Planner(planner.model, planner.cfg, variant=variant, w_cfg=2.0)
        torch.manual_seed(3)
        fast = planner.act(obs)
        torch.manual_seed(3)
        assert np.abs(fast - planner.act_plain(obs)).max() <= 1e-5, f"{variant}: the fast path differs"
        result = evaluate(planner, n_envs=2, n_episodes=1, seed=0, max_steps=cfg.max_episode_steps)
        assert len(result.scores) == 2 and np.isfinite(result.score_mean)
