"""Models, training, checkpoints, exact resume, planning and scoring."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch

from dlite import checkpoint, d4rl
from dlite.config import ConfigError, from_dict
from dlite.dataset import WindowDataset
from dlite.dit import DiT1d
from dlite.evaluate import evaluate
from dlite.flow import fix_mask, sample, time_grid
from dlite.model import DiffuserLite
from dlite.planner import Planner
from dlite.tasks import get_task
from dlite.train import LogRecord, Trainer


@pytest.fixture
def tiny(tiny_hdf5: Path, tiny_overrides: dict) -> tuple:
    cfg = from_dict(tiny_overrides)
    return cfg, WindowDataset(d4rl.load(tiny_hdf5), cfg)


def test_seed_defaults_and_spans() -> None:
    cfg = from_dict({})
    assert (cfg.batch_size, cfg.diffusion_gradient_steps, cfg.invdyn_gradient_steps) == (256, 1_000_000, 1_000_000)
    assert (cfg.d_model, cfg.n_heads, cfg.depth, cfg.discount, cfg.log_interval) == (256, 8, 2, 0.997, 1000)
    assert cfg.spans == (129, 33, 9) and cfg.strides == (32, 8, 1)
    assert cfg.planning_w_cfg == 1.0 and from_dict({"task": "halfcheetah-medium-v2"}).planning_w_cfg == 10.0
    assert from_dict({"task": "hopper-medium-expert-v2"}).planning_target_return == 0.9


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"diffusion_gradient_steps": -5}, "diffusion_gradient_steps"),
        ({"nope": 1}, "nope"),
        ({"task": "ant-medium-v2"}, "task"),
        ({"discount": "high"}, "discount"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"n_heads": 7}, "n_heads"),
        ({"label_dropout": 1.5}, "label_dropout"),
        ({"backup_every": 15_000}, "backup_every"),
        ({"eval_every": 1500}, "eval_every"),
    ],
)
def test_config_errors_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(overrides)
    assert e.value.field == field


def test_time_grid_is_t_to_the_1_5() -> None:
    assert time_grid(3) == pytest.approx([1.0, (2 / 3) ** 1.5, (1 / 3) ** 1.5, 0.0])


def test_sampler_honours_fix_masks(tiny: tuple) -> None:
    cfg, data = tiny
    model = DiffuserLite(cfg, data.obs_dim, data.act_dim)
    for p in model.levels.parameters():  # non-zero output layers so the sampler moves points
        torch.nn.init.normal_(p, std=0.1)
    for level, points in enumerate(cfg.horizons):
        mask = fix_mask(points, data.obs_dim, level)
        prior = torch.zeros(6, points, data.obs_dim)
        prior[:, 0] = torch.randn(6, data.obs_dim)
        prior[:, -1] = torch.randn(6, data.obs_dim)
        for w in (1.0, 3.0):
            x = sample(cast(DiT1d, model.levels[level]), prior, mask, torch.ones(6, 1), 3, 0.5, w)
            assert torch.equal(x[:, 0], prior[:, 0])
            assert torch.equal(x[:, -1], prior[:, -1]) == (level > 0)
            assert not torch.equal(x[:, 1], prior[:, 1])


def test_fresh_model_is_identity_at_init(tiny: tuple) -> None:
    cfg, data = tiny
    net = DiffuserLite(cfg, data.obs_dim, data.act_dim).levels[0]
    out = net(torch.randn(4, cfg.horizons[0], data.obs_dim), torch.rand(4), torch.ones(4, 1), torch.ones(4, 1))
    assert torch.count_nonzero(out) == 0, "adaLN-Zero: output layer starts at zero"


@pytest.mark.parametrize("path", ["eager", "batched"])
def test_loss_falls_on_tiny_dataset(tiny_hdf5: Path, tiny_overrides: dict, path: str) -> None:
    cfg = from_dict(
        {
            **tiny_overrides,
            "diffusion_lr": 2e-3,
            "batch_size": 64,
            "diffusion_gradient_steps": 300,
            "invdyn_gradient_steps": 300,
            "log_interval": 50,
        }
    )
    trainer = Trainer(cfg, WindowDataset(d4rl.load(tiny_hdf5), cfg), path=path)
    logs: list[LogRecord] = []

    class Keep:
        on_log = logs.append

        def on_checkpoint(self, step: int, path: Path) -> None: ...
        def should_stop(self) -> bool:
            return False

    trainer.fit(callbacks=(Keep(),))
    first, last = logs[0].losses, logs[-1].losses
    assert [r.step for r in logs] == [50, 100, 150, 200, 250, 300]
    for key in ("loss0", "loss1", "loss2"):  # much of a flow loss is irreducible noise
        assert last[key] < 0.96 * first[key], (key, first[key], last[key])
    assert last["invdyn_loss"] < 0.5 * first["invdyn_loss"]


def test_checkpoint_round_trip(tiny: tuple, tmp_path: Path) -> None:
    cfg, data = tiny
    trainer = Trainer(cfg, data, tmp_path)
    trainer.fit(until=20)
    state = checkpoint.read(tmp_path / "ckpt_00000020.pt")
    assert state["step"] == 20 and state["dataset"]["fingerprint"] == data.fingerprint
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    assert torch.equal(state["model"]["obs_mean"], torch.from_numpy(data.normalizer.mean))
    fresh = Trainer(cfg, data, tmp_path)
    assert fresh.resume_latest() == tmp_path / "ckpt_00000020.pt"
    for (k, a), b in zip(trainer.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert fresh.sched.state_dict() == trainer.sched.state_dict()
    assert fresh.optim.state_dict()["state"][0]["step"] == trainer.optim.state_dict()["state"][0]["step"]


def test_newest_corrupt_checkpoint_falls_back(tiny: tuple, tmp_path: Path) -> None:
    cfg, data = tiny
    Trainer(cfg, data, tmp_path).fit(until=40)
    (tmp_path / "ckpt_00000040.pt").write_bytes(b"garbage")
    fresh = Trainer(cfg, data, tmp_path)
    assert fresh.resume_latest() == tmp_path / "ckpt_00000020.pt" and fresh.step == 20
    with pytest.raises(checkpoint.CheckpointError, match="ckpt_00000040.pt cannot be read"):
        checkpoint.read(tmp_path / "ckpt_00000040.pt")


def test_resume_refuses_other_data_or_settings(tiny: tuple, tiny_overrides: dict, tmp_path: Path) -> None:
    cfg, data = tiny
    Trainer(cfg, data, tmp_path).fit(until=20)
    other = from_dict({**tiny_overrides, "batch_size": 8})
    with pytest.raises(checkpoint.CheckpointError, match=r"batch_size \(checkpoint 16, now 8\)"):
        Trainer(other, data, tmp_path).resume_latest()
    relaxed = from_dict({**tiny_overrides, "log_interval": 5, "num_envs": 3, "w_cfg": 2.0})
    assert Trainer(relaxed, data, tmp_path).resume_latest() is not None, "planning/eval/log settings may change"
    data.fingerprint = "0" * 64
    with pytest.raises(checkpoint.CheckpointError, match="another dataset"):
        Trainer(cfg, data, tmp_path).resume_latest()


def _train_cli(dataset: Path, out: Path, steps_to: int, resume: bool, tiny_overrides: dict) -> None:
    sets = [
        f"--set={k}={v}"
        for k, v in {**tiny_overrides, "diffusion_gradient_steps": 40, "invdyn_gradient_steps": 40}.items()
    ]
    cmd = [
        sys.executable,
        "-c",
        "import sys; from dlite.cli import main; from dlite.train import Trainer;"
        "orig = Trainer.fit; Trainer.fit = lambda self, until=None, callbacks=(): "
        f"orig(self, {steps_to}, callbacks);"
        "sys.exit(main(sys.argv[1:]))",
        "train",
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--device",
        "cpu",
        *sets,
    ]
    subprocess.run(cmd + (["--resume"] if resume else []), check=True, capture_output=True)


@pytest.mark.parametrize("accel", ["batched", "auto"])
def test_exact_resume_across_processes(tiny_hdf5: Path, tiny_overrides: dict, tmp_path: Path, accel: str) -> None:
    """2N straight == N, save, new process, resume to 2N: bit-identical weights and optimiser.
    With `auto`, the resumed process keeps the path the checkpoint was trained on (the device
    check would otherwise pick by timing, which differs from process to process)."""
    _train_cli(tiny_hdf5, tmp_path / "split", 20, False, {**tiny_overrides, "train_accel": accel})
    assert checkpoint.list_checkpoints(tmp_path / "split")[-1].name == "ckpt_00000020.pt"
    first = checkpoint.read(tmp_path / "split" / "ckpt_00000020.pt")["train_path"]
    assert first == accel or accel == "auto"
    _train_cli(tiny_hdf5, tmp_path / "straight", 40, False, {**tiny_overrides, "train_accel": first})
    _train_cli(tiny_hdf5, tmp_path / "split", 40, True, {**tiny_overrides, "train_accel": accel})
    assert checkpoint.read(tmp_path / "split" / "ckpt_00000040.pt")["train_path"] == first
    a = checkpoint.read(tmp_path / "straight" / "ckpt_00000040.pt")
    b = checkpoint.read(tmp_path / "split" / "ckpt_00000040.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optim"]["state"].values(), b["optim"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_planner_shapes_and_action_bounds(tiny: tuple, tmp_path: Path) -> None:
    cfg, data = tiny
    Trainer(cfg, data, tmp_path).fit(until=20)
    planner = Planner.from_checkpoint(tmp_path / "ckpt_00000020.pt", w_cfg=2.0)
    obs = np.random.default_rng(0).normal(size=(7, data.obs_dim)).astype(np.float32)
    actions = planner.act(obs)
    assert actions.shape == (7, data.act_dim) and np.abs(actions).max() <= 1.0
    plans = planner.plan_plain(planner.model.normalize(torch.from_numpy(obs)))
    assert [p.shape[1] for p in plans] == list(cfg.horizons)
    assert torch.allclose(plans[1][:, -1], plans[0][:, 1]) and torch.allclose(plans[2][:, -1], plans[1][:, 1])
    with pytest.raises(ValueError, match=r"expected observations of shape \(N, 17\)"):
        planner.act(obs[:, :11])


def test_normalised_score_formula() -> None:
    cheetah = get_task("halfcheetah-medium-expert-v2")
    assert cheetah.normalized_score(-280.178953) == pytest.approx(0.0)
    assert cheetah.normalized_score(12135.0) == pytest.approx(100.0)
    assert get_task("hopper-medium-v2").normalized_score(1607.0) == pytest.approx(
        100 * (1607.0 + 20.272305) / (3234.3 + 20.272305)
    )


def test_evaluate_counts_each_episode_once(tiny: tuple, tmp_path: Path) -> None:
    cfg, data = tiny
    Trainer(cfg, data, tmp_path).fit(until=20)
    planner = Planner.from_checkpoint(tmp_path / "ckpt_00000020.pt")
    result = evaluate(planner, n_envs=3, n_episodes=2, max_steps=15)
    assert len(result.returns) == 6 and len(result.scores) == 6
    assert result.score_mean == pytest.approx(np.mean(result.scores))
    assert result.latency_ms > 0


def test_evaluate_refuses_a_mismatched_environment(tiny: tuple, tmp_path: Path) -> None:
    cfg, data = tiny
    Trainer(cfg, data, tmp_path).fit(until=20)
    state = checkpoint.read(tmp_path / "ckpt_00000020.pt")
    state["config"]["task"] = "hopper-medium-v2"
    checkpoint.write_atomic(state, tmp_path / "hopper.pt")
    planner = Planner.from_checkpoint(tmp_path / "hopper.pt")
    with pytest.raises(ValueError, match="obs/act sizes 17/6, but Hopper-v4 has 11/3"):
        evaluate(planner, 1, 1)


def test_evaluation_mid_training_leaves_training_unchanged(tiny: tuple, tmp_path: Path) -> None:
    """Quick evaluations draw planning noise from a forked RNG: the run stays exact."""
    cfg, data = tiny
    straight = Trainer(cfg, data)
    straight.fit(until=40)
    interrupted = Trainer(cfg, data)
    interrupted.fit(until=20)
    first = evaluate(Planner(interrupted.model, cfg), n_envs=2, n_episodes=1, max_steps=5, seed=3)
    interrupted.model.train()
    interrupted.fit(until=40)
    for (key, a), b in zip(straight.model.state_dict().items(), interrupted.model.state_dict().values()):
        assert torch.equal(a, b), key
    again = evaluate(Planner(interrupted.model, cfg), n_envs=2, n_episodes=1, max_steps=5, seed=3)
    assert len(first.returns) == len(again.returns) == 2


def test_resume_refuses_another_precision(tiny: tuple, tmp_path: Path) -> None:
    cfg, data = tiny
    Trainer(cfg, data, tmp_path).fit(until=20)
    state = checkpoint.read(tmp_path / "ckpt_00000020.pt")
    state["amp"] = "torch.bfloat16"
    checkpoint.write_atomic(state, tmp_path / "ckpt_00000020.pt")
    with pytest.raises(checkpoint.CheckpointError, match="mixed precision torch.bfloat16, now off"):
        Trainer(cfg, data, tmp_path).resume_latest()
