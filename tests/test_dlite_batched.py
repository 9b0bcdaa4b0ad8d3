"""One batched step for all levels: the same losses and gradients as the per-level step for
2, 3 and 4 levels, R1 and reflow, padded (GPU) and grouped (CPU); exact resume; a checkpoint
of the per-level layout loads; and the op count of a training step (counted, not timed)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import cast

import pytest
import torch

from dlite import d4rl, stacked
from dlite.config import from_dict
from dlite.dataset import WindowDataset
from dlite.dit import DiT1d
from dlite.flow import fix_mask, flow_loss, loss_weight
from dlite.model import DiffuserLite
from dlite.ops import count_ops
from dlite.stacked import StackedLevels, groups_of
from dlite.synthetic import random_dataset
from dlite.train import Trainer
from tests.conftest import TINY

OBS = 5
LEVELS = {2: [4, 6], 3: [5, 5, 9], 4: [3, 3, 4, 5]}


def _model(horizons: list[int], block: str, seed: int = 0) -> tuple[DiffuserLite, object]:
    torch.manual_seed(seed)
    cfg = from_dict(
        {
            "emb_dim": 32,
            "d_model": 32,
            "n_heads": 2,
            "depth": 2,
            "invdyn_hidden": 16,
            "horizons": horizons,
            "block": block,
        }
    )
    model = DiffuserLite(cfg, OBS, 2)
    with torch.no_grad():  # non-zero output layers, so every weight gets a gradient
        for p in model.levels.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, cfg


def _per_level(
    model: DiffuserLite, x0: list, values: list, masks: list, weights: list, x1: list | None, conditional: bool
) -> torch.Tensor:
    return torch.stack(
        [
            flow_loss(cast(DiT1d, net), a, v, m, w, 0.25, x1=None if x1 is None else x1[i], conditional=conditional)
            for i, (net, a, v, m, w) in enumerate(zip(model.levels, x0, values, masks, weights))
        ]
    )


@pytest.mark.parametrize("levels", sorted(LEVELS))
@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize(("block", "reflow"), [("reference", False), ("reference", True), ("dit", False)])
def test_batched_losses_and_gradients_equal_the_per_level_ones(
    levels: int, pad: bool, block: str, reflow: bool
) -> None:
    horizons = LEVELS[levels]
    model, cfg = _model(horizons, block)
    masks = [fix_mask(h, OBS, i) for i, h in enumerate(horizons)]
    weights = [loss_weight(h, OBS, 10.0) for h in horizons]
    x0 = [torch.randn(6, h, OBS) for h in horizons]
    values = [torch.randn(6, 1) for _ in horizons]
    x1 = [torch.randn(6, h, OBS) for h in horizons] if reflow else None
    reference = copy.deepcopy(model)
    stacked = StackedLevels(model.levels, tuple(horizons), masks, weights, pad)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values())), (
        "the levels' own parameters are aliases of the stacked weights: same values, same keys"
    )
    for conditional in (True, False) if reflow else (True,):
        torch.manual_seed(3)
        ref = _per_level(reference, x0, values, masks, weights, x1, conditional)
        ref_grads = torch.autograd.grad(ref.sum(), list(reference.levels.parameters()))
        after_ref = torch.rand(1)
        torch.manual_seed(3)
        got = stacked.losses(x0, values, 0.25, x1=x1, conditional=conditional)
        assert torch.equal(torch.rand(1), after_ref), "the same draws: the RNG ends where the per-level step's did"
        grads = stacked.per_level(list(torch.autograd.grad(got.sum(), stacked.parameters())))
        assert got.shape == (levels,)
        assert torch.allclose(got, ref, rtol=0, atol=1e-5), (got, ref)
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r, rtol=0, atol=1e-5), (g - r).abs().max()


@pytest.mark.parametrize("pad", [True, False])
def test_weights_and_buffers_loaded_into_the_levels_reach_the_stacked_tensors(pad: bool) -> None:
    """`load_state_dict` (a resume, reflow starting from R1) writes through the aliases, Fourier
    frequencies and position embeddings included."""
    horizons = LEVELS[3]
    model, _ = _model(horizons, "reference")
    other, _ = _model(horizons, "reference", seed=1)  # other weights, other random frequencies
    masks = [fix_mask(h, OBS, i) for i, h in enumerate(horizons)]
    weights = [loss_weight(h, OBS, 10.0) for h in horizons]
    stacked = StackedLevels(model.levels, tuple(horizons), masks, weights, pad)
    model.load_state_dict(other.state_dict())
    x0, values = [torch.randn(4, h, OBS) for h in horizons], [torch.randn(4, 1) for _ in horizons]
    torch.manual_seed(5)
    ref = _per_level(other, x0, values, masks, weights, None, True)
    torch.manual_seed(5)
    assert torch.allclose(stacked.losses(x0, values, 0.25), ref, rtol=0, atol=1e-5)


def test_levels_group_by_points_on_a_cpu_and_all_together_on_a_gpu() -> None:
    assert groups_of((5, 5, 9), pad=False) == [[0, 1], [2]]
    assert groups_of((5, 5, 9), pad=True) == [[0, 1, 2]]
    assert groups_of((3, 4, 3, 4), pad=False) == [[0, 2], [1, 3]]


@pytest.fixture
def data(tiny_hdf5: Path) -> WindowDataset:
    return WindowDataset(d4rl.load(tiny_hdf5), from_dict(TINY), "cpu")


def test_a_batched_run_resumes_bit_exactly(data: WindowDataset, tmp_path: Path) -> None:
    cfg = from_dict(TINY)
    straight = Trainer(cfg, data, tmp_path / "straight", "batched")
    straight.fit(until=30)
    Trainer(cfg, data, tmp_path / "split", "batched").fit(until=20)
    resumed = Trainer(cfg, data, tmp_path / "split", "batched")
    assert resumed.resume_latest() is not None
    resumed.fit(until=30)
    for (key, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), key


def test_a_per_level_checkpoint_goes_on_batched(data: WindowDataset, tmp_path: Path) -> None:
    """The layout is the per-level one it always was: a checkpoint written by the per-level
    step (and one from before training paths were recorded) resumes on the batched path."""
    cfg = from_dict(TINY)
    Trainer(cfg, data, tmp_path, "eager").fit(until=20)
    path = tmp_path / "ckpt_00000020.pt"
    state = torch.load(path, weights_only=False)
    del state["train_path"]  # written before this change
    torch.save(state, path)
    batched = Trainer(cfg, data, tmp_path, "batched")
    assert batched.resume_latest() == path and batched.step == 20
    eager = Trainer(cfg, data, tmp_path, "eager")
    eager.resume_latest()
    for t in (batched, eager):
        t.fit(until=30)
    a, b = batched.read_losses(), eager.read_losses()
    assert all(abs(a[k] - b[k]) <= 1e-5 * max(abs(b[k]), 1.0) for k in a), (a, b)


@pytest.mark.parametrize(("first", "then"), [("batched", "eager"), ("eager", "batched"), ("batched", "fused")])
def test_a_checkpoint_resumes_across_layouts_with_every_optimiser_state_intact(
    data: WindowDataset, tmp_path: Path, first: str, then: str
) -> None:
    """The optimiser's state is saved per level: a resume on the other layout has every moment of
    every level and one step count per parameter (a shared one would be stepped once per level)."""
    cfg = from_dict(TINY)
    Trainer(cfg, data, tmp_path, first).fit(until=20)
    saved = torch.load(tmp_path / "ckpt_00000020.pt", weights_only=False)["optim"]
    resumed = Trainer(cfg, data, tmp_path, then)
    resumed.resume_latest()
    resumed.fit(until=23)
    state = (
        resumed.stacked.optimizer_state_to_levels(resumed.optim.state_dict())
        if resumed.stacked
        else resumed.optim.state_dict()
    )
    assert sorted(state["state"]) == sorted(saved["state"]) == list(range(len(list(resumed.model.levels.parameters()))))
    for i, entry in state["state"].items():
        assert float(entry["step"]) == 23.0, (i, entry["step"])
        assert entry["exp_avg"].shape == saved["state"][i]["exp_avg"].shape


def test_a_seed_size_training_step_is_at_most_a_third_of_the_per_level_ops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted at the seed configuration, in the GPU's layout (every level in one group): on a
    GPU each dispatched op is a kernel launch, and a count is the same on every machine."""
    monkeypatch.setattr(stacked, "pads", lambda device: True)
    cfg = from_dict({"batch_size": 8})  # the seed model; the batch does not change the count
    raw = random_dataset(tmp_path / "random.hdf5", 17, 6, 2)
    data = WindowDataset(raw, cfg, "cpu")
    counts = {}
    for path in ("eager", "batched"):
        trainer = Trainer(cfg, data, None, path)
        trainer.train_step()
        counts[path] = count_ops(trainer.train_step)
    assert trainer.stacked is not None
    assert len(trainer.stacked.groups) == 1
    assert counts["batched"] <= 880, f"a third of the 2,640 ops of a per-level step before batching: {counts}"
