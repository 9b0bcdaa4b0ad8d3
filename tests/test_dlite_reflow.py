"""R2: reflow pairs, reflow training with exact resume, the R2 planner and `dlite reflow`."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dlite import checkpoint, d4rl
from dlite.config import from_dict
from dlite.dataset import WindowDataset
from dlite.flow import fix_mask, sample
from dlite.planner import Planner
from dlite.reflow import PairsError, PairSpec, PairStore, ReflowTrainer, load_r1
from dlite.train import Trainer

PAIRS = {
    "reflow_pairs_cond": 40,
    "reflow_pairs_uncond": 12,
    "reflow_pair_batch": 16,
    "reflow_pair_steps": 4,
    "reflow_gradient_steps": 20,
    "variant": "R2",
    "ema_rate": 0.5,
    "diffusion_lr": 3e-3,
}  # an R1 EMA that moved off its zero-output start in 20 steps


@pytest.fixture(scope="module")
def r1(tiny_hdf5: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    from tests.conftest import TINY

    cfg = from_dict({**TINY, **PAIRS})
    data = WindowDataset(d4rl.load(tiny_hdf5), cfg)
    out = tmp_path_factory.mktemp("r1")
    Trainer(cfg, data, out).fit(until=20)
    path = out / "ckpt_00000020.pt"
    return cfg, data, path, load_r1(checkpoint.read(path), cfg, data, path)


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(folder.glob("*.npy"))}


def test_pairs_start_from_the_windows_and_regenerate_identically(r1: tuple, tmp_path: Path) -> None:
    cfg, data, _, model = r1
    spec = PairSpec.of(cfg, model, data)
    assert [c for c, _, _ in spec.batches()] == [True] * 3 + [False]  # 40 conditional in 16s, then 12
    seen = []
    store = PairStore(tmp_path / "a", spec)
    assert store.generate(model, data, lambda level, done, total: seen.append((level, done, total)))
    assert store.complete and seen[-1] == (2, 52, 52) and len(seen) == 12
    pairs = _arrays(tmp_path / "a")
    for level, points in enumerate(cfg.horizons):
        x0, x1 = pairs[f"level{level}_x0.npy"], pairs[f"level{level}_x1.npy"]
        assert x0.shape == x1.shape == (52, points, data.obs_dim)
        mask = fix_mask(points, data.obs_dim, level).bool().numpy()
        assert not np.allclose(x0[:, ~mask[:, 0]], x1[:, ~mask[:, 0]])
        assert np.abs(x1).max() > 2.0, "x1 is standard-normal noise (temperature 1)"
    # a fresh machine regenerates the same pairs; an interrupted generation resumes to the same ones
    calls: list[int] = []

    def stop_after_six() -> bool:
        calls.append(1)
        return len(calls) > 6

    interrupted = PairStore(tmp_path / "b", spec)
    assert not interrupted.generate(model, data, should_stop=stop_after_six)
    assert 0 < interrupted.pairs_done < 3 * 52
    resumed = PairStore(tmp_path / "b", spec)
    assert resumed.pairs_done == interrupted.pairs_done
    assert resumed.generate(model, data)
    for name, array in _arrays(tmp_path / "b").items():
        assert np.array_equal(array, pairs[name]), name
    with pytest.raises(PairsError, match="reflow_pair_steps"):
        PairStore(tmp_path / "a", PairSpec.of(cfg.replace(reflow_pair_steps=5), model, data))


def test_pairs_are_the_r1_models_integration_of_the_stored_noise(r1: tuple, tmp_path: Path) -> None:
    """Recomputed from the stored arrays alone: x0 is the EMA model's 20-step (here 4)
    integration of the stored x1 from the window's fixed points, conditioned on the stored
    value for the conditional pairs and on nothing for the rest."""
    cfg, data, _, model = r1
    store = PairStore(tmp_path, PairSpec.of(cfg, model, data))
    store.generate(model, data)
    dataset_rows = data.obs.numpy()
    for level, points in enumerate(cfg.horizons):
        x0, x1, value = (torch.from_numpy(np.load(tmp_path / f"level{level}_{k}.npy")) for k in ("x0", "x1", "value"))
        mask = fix_mask(points, data.obs_dim, level)
        assert all((dataset_rows == row).all(1).any() for row in x0[:, 0].numpy()), "fixed points are real states"
        for conditional, rows in ((True, slice(0, 40)), (False, slice(40, 52))):
            again = sample(
                model.ema_levels[level],
                x0[rows] * mask,
                mask,
                value[rows],
                cfg.reflow_pair_steps,
                1.0,
                1.0 if conditional else 0.0,
                noise=x1[rows],
            )
            assert torch.allclose(again, x0[rows], atol=1e-5)
            other = sample(
                model.ema_levels[level],
                x0[rows] * mask,
                mask,
                value[rows],
                cfg.reflow_pair_steps,
                1.0,
                0.0 if conditional else 1.0,
                noise=x1[rows],
            )
            assert not torch.allclose(other, x0[rows], atol=1e-3), "the condition (or its absence) matters"


def test_reflow_batches_use_the_stored_noise_and_unconditional_pairs(
    r1: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, data, _, model = r1
    store = PairStore(tmp_path / "pairs", PairSpec.of(cfg, model, data))
    store.generate(model, data)
    trainer = ReflowTrainer(cfg, data, store, model, 20)
    calls = []

    def recording_loss(net, x0, value, mask, weight, label_dropout, x1=None, conditional=True):  # noqa: ANN001
        calls.append((x0, x1, conditional))
        return (x0 - x1).pow(2).mean() * 0 + sum(p.sum() for p in net.parameters()) * 0

    monkeypatch.setattr("dlite.train.flow_loss", recording_loss)  # the per-level (eager) step
    for _ in range(5):
        trainer.train_step()
    pairs = store.tensors(torch.device("cpu"))
    for i, (x0, x1, conditional) in enumerate(calls):
        level, step = i % 3, i // 3
        assert conditional == (step != 4), "steps 0-3 conditional, step 4 unconditional"
        stored = pairs[level]
        rows = [int(((stored["x0"] == row).flatten(1).all(1)).nonzero()[0]) for row in x0]
        assert all((r >= 40) == (not conditional) for r in rows), "unconditional steps draw from the last 12 pairs"
        assert torch.equal(x1, stored["x1"][rows]), "reflow trains on the noise each x0 came from"


@pytest.mark.parametrize("uncond", [0])
def test_reflow_without_unconditional_pairs_trains_every_step_conditionally(
    r1: tuple, tmp_path: Path, uncond: int
) -> None:
    cfg, data, _, model = r1
    cfg = cfg.replace(reflow_pairs_uncond=uncond)
    store = PairStore(tmp_path, PairSpec.of(cfg, model, data))
    store.generate(model, data)
    trainer = ReflowTrainer(cfg, data, store, model, 20)
    for _ in range(6):
        assert trainer.conditional_step()
        trainer.train_step()


def test_reflow_resumes_bit_exactly_and_plans_in_one_step(r1: tuple, tmp_path: Path) -> None:
    cfg, data, _, model = r1
    store = PairStore(tmp_path / "pairs", PairSpec.of(cfg, model, data))
    store.generate(model, data)
    straight = ReflowTrainer(cfg, data, store, model, 20, tmp_path / "straight")
    for a, b in zip(straight.model.ema_levels.parameters(), model.ema_levels.parameters()):
        assert torch.equal(a, b), "reflow starts from the R1 EMA weights"
    assert straight.optim.param_groups[0]["lr"] == cfg.reflow_lr
    conditional = []
    for _ in range(10):
        conditional.append(straight.conditional_step())
        straight.train_step()
    assert conditional == [True] * 4 + [False] + [True] * 4 + [False], "every 5th step unconditional"
    straight.fit()
    assert straight.lr() == cfg.reflow_lr and straight.read_losses().keys() == {"loss0", "loss1", "loss2"}

    split = ReflowTrainer(cfg, data, store, model, 20, tmp_path / "split")
    split.fit(until=30)
    again = ReflowTrainer(cfg, data, store, model, 20, tmp_path / "split")
    assert again.resume_latest() == tmp_path / "split" / "ckpt_00000030.pt" and again.step == 30
    again.fit()
    whole = checkpoint.read(tmp_path / "straight" / "ckpt_00000040.pt")  # reflow steps continue R1's 20
    resumed = checkpoint.read(tmp_path / "split" / "ckpt_00000040.pt")
    assert whole["variant"] == resumed["variant"] == "R2"
    for key in whole["model"]:
        assert torch.equal(whole["model"][key], resumed["model"][key]), key
    assert torch.equal(whole["rng"]["torch"], resumed["rng"]["torch"])

    planner = Planner.from_checkpoint(tmp_path / "straight" / "ckpt_00000040.pt")
    task = planner.cfg.r2_planning_target_return, planner.cfg.r2_planning_w_cfg
    assert planner.variant == "R2" and planner.sampling_steps == 1 and (planner.target_return, planner.w_cfg) == task
    assert planner.act(np.zeros((2, data.obs_dim), np.float32)).shape == (2, data.act_dim)
    with pytest.raises(checkpoint.CheckpointError, match="is not a reflow"):
        ReflowTrainer(cfg, data, store, model, 20, tmp_path / "x").load_state(checkpoint.read(r1[2]), r1[2])


def test_each_trainer_builds_only_what_it_steps(r1: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """R1 steps the levels on a cosine schedule and inverse dynamics; reflow steps the levels
    alone at a constant rate, so it builds no schedule and no inverse-dynamics optimiser (none
    to replace, none pointing at an optimiser it replaced)."""
    cfg, data, _, model = r1
    store = PairStore(tmp_path, PairSpec.of(cfg, model, data))
    store.generate(model, data)
    built: list[object] = []

    def recording(init: Callable[..., None]) -> Callable[..., None]:
        def wrapped(self: object, *args: object, **kwargs: object) -> None:
            built.append(self)
            init(self, *args, **kwargs)

        return wrapped

    for kind in (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler):
        monkeypatch.setattr(kind, "__init__", recording(kind.__init__))

    r1_trainer = Trainer(cfg, data)
    assert built == [r1_trainer.optim, r1_trainer.sched, r1_trainer.invdyn_optim]
    assert r1_trainer.sched.optimizer is r1_trainer.optim
    r1_trainer.train_step()
    assert r1_trainer.sched.last_epoch == 1 and r1_trainer.optim.param_groups[0]["lr"] == r1_trainer.lr()

    built.clear()
    reflow = ReflowTrainer(cfg, data, store, model, 20)
    assert built == [reflow.optim] and type(reflow.optim) is torch.optim.AdamW
    assert not hasattr(reflow, "sched") and not hasattr(reflow, "invdyn_optim")
    assert [id(p) for g in reflow.optim.param_groups for p in g["params"]] == [id(p) for p in reflow.level_parameters]
    assert reflow.optim.param_groups[0]["lr"] == reflow.lr() == cfg.reflow_lr
    assert "initial_lr" not in reflow.optim.param_groups[0], "no schedule drives it"
    assert {"sched", "invdyn_optim"}.isdisjoint(reflow.state_dict())


def test_reflow_command_line(r1: tuple, tiny_hdf5: Path, tmp_path: Path) -> None:
    _, _, source, _ = r1
    cmd = [
        sys.executable,
        "-m",
        "dlite.cli",
        "reflow",
        "--checkpoint",
        str(source),
        "--out",
        str(tmp_path),
        "--dataset",
        str(tiny_hdf5),
        "--device",
        "cpu",
        "--set",
        "reflow_gradient_steps=10",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ckpt_00000030.pt").exists() and (tmp_path / "pairs" / "manifest.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    wrong = subprocess.run(cmd[:-2] + ["--set", "d_model=64"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "d_model" in wrong.stderr
    evaluated = subprocess.run(
        [
            sys.executable,
            "-m",
            "dlite.cli",
            "eval",
            "--checkpoint",
            str(tmp_path / "ckpt_00000030.pt"),
            "--envs",
            "2",
            "--episodes",
            "1",
            "--max-steps",
            "5",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert '"variant": "R2"' in evaluated.stdout and '"hz_1env"' in evaluated.stdout


def test_the_method_imports_nothing_above_it() -> None:
    """dlite/ is the bottom of the stack: no module of it imports app/ or worker/."""
    for path in Path("dlite").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not any(n.split(".")[0] in ("app", "worker") for n in names), f"{path} imports {names}"
