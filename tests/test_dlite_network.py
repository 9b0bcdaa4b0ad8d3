"""The reference DiT-1d network, old checkpoints, and the fast planner against the plain one."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlite import checkpoint, d4rl, packed
from dlite.config import from_dict
from dlite.dataset import WindowDataset
from dlite.dit import Block, DiT1d, sinusoidal
from dlite.model import DiffuserLite
from dlite.planner import Planner, Variant
from dlite.train import Trainer


def _linear(m: nn.Module) -> nn.Linear:
    """A Linear taken out of a Sequential, which types its items as plain Modules."""
    return cast(nn.Linear, m)


def _block(net: DiT1d, i: int = 0) -> Block:
    return cast(Block, net.blocks[i])


def test_reference_block_with_zero_gates_is_the_modulated_layer_norm() -> None:
    torch.manual_seed(0)
    block = Block(16, 2, reference=True)
    x, c = torch.randn(3, 5, 16), torch.randn(3, 16)
    ada = _linear(block.ada[1])
    nn.init.normal_(ada.weight)  # non-zero shift and scale ...
    with torch.no_grad():
        ada.weight[2 * 16 : 3 * 16] = 0  # ... but both gates zero
        ada.weight[5 * 16 :] = 0
        ada.bias.zero_()
    shift, scale = block.ada(c)[:, :16], block.ada(c)[:, 16:32]
    expected = F.layer_norm(x, (16,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    assert torch.allclose(block(x, c), expected, atol=1e-6)
    textbook = Block(16, 2, reference=False)
    textbook.load_state_dict(block.state_dict())
    assert torch.allclose(textbook(x, c), x), "the textbook block keeps the residual: identity with zero gates"


def test_seed_configuration_has_the_papers_size() -> None:
    cfg = from_dict({})
    model = DiffuserLite(cfg, 17, 6)
    per_level = [sum(p.numel() for p in level.parameters()) for level in model.levels]
    assert per_level == [2_787_857] * 2 + [2_787_857]  # 2.79M a level, value-condition MLP included
    assert sum(p.numel() for p in cast(DiT1d, model.levels[0]).cond.parameters()) == 66_304


def test_reference_initialisation_and_embeddings() -> None:
    torch.manual_seed(0)
    net = DiT1d(17, 5, 256, 256, 8, 2, "reference")
    assert isinstance(net.t_proj[-1], nn.Mish), "the reference mapping MLP ends in a Mish"
    qkv = _block(net).qkv
    bound = math.sqrt(6 / (qkv.in_features + qkv.out_features))
    assert qkv.weight.abs().max() <= bound and qkv.weight.abs().max() > 0.9 * bound  # Xavier-uniform
    assert torch.count_nonzero(qkv.bias) == 0
    assert _linear(net.t_proj[0]).weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert _linear(net.cond.mlp[0]).bias.abs().sum() > 0, "the value condition keeps PyTorch's default init"
    for zeroed in (_linear(_block(net).ada[1]), _linear(net.final_ada[1]), net.out):
        assert torch.count_nonzero(zeroed.weight) == 0
    half = 128
    pos = cast(torch.Tensor, net.pos)  # a buffer, which nn.Module types as Tensor | Module
    assert torch.allclose(pos[3, half - 1], torch.tensor(math.sin(3 * 1e-4)))  # divides by half - 1
    assert torch.allclose(
        sinusoidal(5, 256, reference=False)[3, half - 1], torch.tensor(math.sin(3 * 1e-4 ** (127 / 128)))
    )
    textbook = DiT1d(17, 5, 256, 256, 8, 2, "dit")
    assert not isinstance(textbook.t_proj[-1], nn.Mish)


@pytest.fixture(scope="module")
def trained(tiny_hdf5: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    from tests.conftest import TINY

    cfg = from_dict(TINY)
    data = WindowDataset(d4rl.load(tiny_hdf5), cfg)
    out = tmp_path_factory.mktemp("r1")
    Trainer(cfg, data, out).fit(until=20)
    return cfg, data, out / "ckpt_00000020.pt"


def test_checkpoint_records_the_block_and_old_ones_load_as_dit(trained: tuple, tmp_path: Path) -> None:
    cfg, data, path = trained
    state = checkpoint.read(path)
    assert state["config"]["block"] == "reference"
    old = dict(state, config={k: v for k, v in state["config"].items() if k != "block"})
    old_path = checkpoint.write_atomic(old, tmp_path / "old" / "ckpt_00000020.pt")
    planner = Planner.from_checkpoint(old_path)
    assert planner.cfg.block == "dit" and not _block(cast(DiT1d, planner.model.levels[0])).reference
    dit_trainer = Trainer(cfg.replace(block="dit"), data, tmp_path / "old")
    assert dit_trainer.resume_latest() == old_path and dit_trainer.step == 20
    with pytest.raises(checkpoint.CheckpointError, match=r"block \(checkpoint 'dit', now 'reference'\)"):
        Trainer(cfg, data, tmp_path / "old").resume_latest()


@pytest.mark.parametrize(
    ("w_cfg", "variant", "n"), [(1.0, "R1", 1), (2.5, "R1", 4), (0.0, "R1", 3), (1.0, "R2", 4), (2.5, "R2", 1)]
)
def test_fast_planner_gives_the_plain_planners_actions(trained: tuple, w_cfg: float, variant: Variant, n: int) -> None:
    cfg, data, path = trained
    model = Planner.from_checkpoint(path).model
    with torch.no_grad():  # trained 20 steps, the EMA barely moved: make the net matter
        for p in model.ema_levels.parameters():
            p.add_(0.05 * torch.randn_like(p))
    planner = Planner(model, cfg, w_cfg=w_cfg, variant=variant)
    obs = np.random.default_rng(0).normal(size=(n, data.obs_dim)).astype(np.float32)
    for seed in (0, 1):
        torch.manual_seed(seed)
        fast = planner.act(obs)
        torch.manual_seed(seed)
        plain = planner.act_plain(obs)
        assert np.abs(fast - plain).max() <= 1e-5
    assert np.abs(fast).max() > 1e-3, "actions must not be trivially zero"
    torch.manual_seed(0)
    assert not np.array_equal(planner.act(obs), fast), "different noise, different plan"


def test_bf16_planner_stays_close_to_fp32(trained: tuple) -> None:
    cfg, data, path = trained
    model = Planner.from_checkpoint(path).model
    fp32, bf16 = Planner(model, cfg), Planner(model, cfg, dtype=torch.bfloat16)
    obs = np.random.default_rng(1).normal(size=(5, data.obs_dim)).astype(np.float32)
    torch.manual_seed(0)
    a = fp32.act(obs)
    torch.manual_seed(0)
    b = bf16.act(obs)
    assert b.dtype == np.float32 and np.abs(a - b).max() < 0.05
    assert next(model.parameters()).dtype == torch.float32, "the model itself stays fp32"


@pytest.mark.parametrize(
    ("block", "horizons"), [("dit", [5, 5, 9]), ("reference", [5, 5, 9]), ("reference", [3, 3, 3])]
)
def test_fast_planner_equals_plain_at_depth_2(block: str, horizons: list[int]) -> None:
    """Pruning the last block to the free points (point 1 in the last step) after a full
    first block, for both blocks; a 3-point finer level has a single free point."""
    torch.manual_seed(0)
    cfg = from_dict(
        {
            "emb_dim": 32,
            "d_model": 32,
            "n_heads": 2,
            "depth": 2,
            "invdyn_hidden": 32,
            "block": block,
            "horizons": horizons,
        }
    )
    model = DiffuserLite(cfg, 17, 6)
    with torch.no_grad():
        for p in model.ema_levels.parameters():
            p.add_(0.05 * torch.randn_like(p))
    obs = np.random.default_rng(0).normal(size=(3, 17)).astype(np.float32)
    for w_cfg in (1.0, 3.0):
        planner = Planner(model, cfg, w_cfg=w_cfg)
        torch.manual_seed(2)
        fast = planner.act(obs)
        torch.manual_seed(2)
        assert np.abs(fast - planner.act_plain(obs)).max() <= 1e-5


@pytest.mark.skipif(not packed.available(torch.device("cpu")), reason="this PyTorch build has no oneDNN")
def test_packed_copies_compute_what_their_modules_do() -> None:
    """Packed Linear layers (and the GELUs fused into them) give the module's outputs;
    the original keeps its trainable Linear layers."""
    torch.manual_seed(0)
    cfg = from_dict({"emb_dim": 32, "d_model": 32, "n_heads": 2, "depth": 2, "invdyn_hidden": 32})
    model = DiffuserLite(cfg, 17, 6).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert packed.pack(model.invdyn, 4).net[0] is not model.invdyn.net[0], "a copy"
    assert isinstance(packed.pack(model.invdyn, 4).net[0], nn.Linear), "small layers stay F.linear"
    invdyn = packed.pack(model.invdyn, 4, min_weights=1)
    layers = list(invdyn.net)
    assert [type(m).__name__ for m in layers] == ["PackedLinear", "Dropout", "PackedLinear", "PackedLinear", "Tanh"]
    assert [(m.post, m.algorithm) for m in layers if isinstance(m, packed.PackedLinear)] == [
        ("gelu", "none"),
        ("gelu", "none"),
        ("none", ""),
    ]
    obs, nxt = torch.randn(2, 3, 17), torch.randn(2, 3, 17)
    with torch.inference_mode():
        assert torch.allclose(invdyn(obs, nxt), model.invdyn(obs, nxt), atol=1e-6)
    net = cast(DiT1d, model.ema_levels[2])
    fast = cast(DiT1d, packed.pack(net, 9, min_weights=1))
    assert isinstance(_block(fast).mlp[0], packed.PackedLinear) and _block(fast).mlp[0].algorithm == "tanh"
    x, t = torch.randn(3, 9, 17), torch.rand(3)
    value, keep = torch.randn(3, 1), torch.ones(3, 1)
    with torch.inference_mode():
        mods = net.modulations(net.embed(t, value, keep))
        assert torch.allclose(fast.forward_modulated(x, mods), net.forward_modulated(x, mods), atol=1e-5)
        assert torch.allclose(fast.forward_modulated(x, mods, slice(1, 2)), net(x, t, value, keep)[:, 1:2], atol=1e-5)
    assert isinstance(_block(net).qkv, torch.nn.Linear)
    assert isinstance(model.invdyn.net[0], torch.nn.Linear) and model.invdyn.net[0].weight.requires_grad


@pytest.mark.skipif(not packed.available(torch.device("cpu")), reason="this PyTorch build has no oneDNN")
@pytest.mark.parametrize(("variant", "w_cfg"), [("R1", 1.0), ("R1", 2.5), ("R2", 1.0)])
def test_packed_planner_at_the_seed_size_gives_the_plain_actions(variant: Variant, w_cfg: float) -> None:
    """At the paper's width the planner packs qkv and the MLPs (the small layers stay
    F.linear) and still gives the textbook loop's actions."""
    torch.manual_seed(0)
    cfg = from_dict({})
    model = DiffuserLite(cfg, 17, 6)
    with torch.no_grad():
        for p in model.ema_levels.parameters():
            p.add_(0.02 * torch.randn_like(p))
    planner = Planner(model, cfg, variant=variant, w_cfg=w_cfg)
    block = _block(planner.levels[0].net)
    assert isinstance(block.qkv, packed.PackedLinear) and isinstance(block.mlp[0], packed.PackedLinear)
    assert isinstance(planner.levels[0].net.x_proj, nn.Linear) and isinstance(block.proj, nn.Linear)
    assert isinstance(Planner(model, cfg, pack=False).levels[0].net.blocks[0].qkv, nn.Linear)
    obs = np.random.default_rng(0).normal(size=(3, 17)).astype(np.float32)
    torch.manual_seed(4)
    fast = planner.act(obs)
    torch.manual_seed(4)
    assert np.abs(fast - planner.act_plain(obs)).max() <= 1e-5
    assert np.abs(fast).max() > 1e-3


BF16_ON_AVX2 = """
import numpy as np, torch
from dlite import packed
from dlite.config import from_dict
from dlite.model import DiffuserLite
from dlite.planner import Planner
cfg = from_dict({})
planner = Planner(DiffuserLite(cfg, 17, 6), cfg, dtype=torch.bfloat16)
assert not packed.available(torch.device("cpu"), torch.bfloat16)
assert not isinstance(planner.levels[0].net.blocks[0].qkv, packed.PackedLinear)
print(planner.act(np.zeros((1, 17), np.float32)).shape)
"""


def test_bf16_planning_works_on_a_cpu_without_avx512() -> None:
    """oneDNN has no packed bf16 path on AVX2-only CPUs (most laptops, AMD Zen 2/3): the
    planner must fall back to F.linear there, not fail. ONEDNN_MAX_CPU_ISA makes this CPU
    look like one."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run([sys.executable, "-c", BF16_ON_AVX2], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(1, 6)"


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="torch.compile on CPU needs a C++ compiler"
)
def test_compiled_planner_gives_the_plain_planners_actions() -> None:
    """torch.compile draws PyTorch's own random numbers (fallback_random), so a compiled
    plan equals the eager one for the same RNG state, noise included."""
    torch.manual_seed(0)
    cfg = from_dict(
        {"emb_dim": 32, "d_model": 32, "n_heads": 2, "depth": 2, "invdyn_hidden": 32, "horizons": [3, 3, 3]}
    )
    model = DiffuserLite(cfg, 5, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    planner = Planner(model, cfg, compile=True, w_cfg=2.5, temperature=0.5)
    obs = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    for seed in (0, 1):
        torch.manual_seed(seed)
        fast = planner.act(obs)
        torch.manual_seed(seed)
        assert np.abs(fast - planner.act_plain(obs)).max() <= 1e-5
