"""DiT-1d: a small diffusion transformer over the points of one plan level.

Two networks share these modules, chosen by the `block` setting. `reference` is the one behind the paper's numbers
(CleanDiffuser's DiT1d of that time): its blocks *replace* the residual stream with the
modulated, normalised input before attention, its mapping MLP ends in a Mish, and its
Linear layers start Xavier-uniform. `dit` is the textbook adaLN-Zero DiT with PyTorch's
default initialisation, which this project ran before; old checkpoints load as `dit`.

The forward pass is split at the conditioning vector: `embed` and `modulations` depend
only on (t, condition), `forward_modulated` on the plan. A planner with a fixed target
return computes the first two once per sampling step, not once per decision.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = ("reference", "dit")

Modulation = tuple[torch.Tensor, ...]
"""A block's (shift1, 1 + scale1, gate1, shift2, 1 + scale2, gate2), each (B, 1, d_model)."""
Modulations = tuple[list[Modulation], tuple[torch.Tensor, torch.Tensor]]
"""Every block's modulation and the final layer's (shift, 1 + scale)."""


class FourierTime(nn.Module):
    """Random Fourier features of t in [0, 1] (fixed frequencies, scale 16), then an MLP."""

    freqs: torch.Tensor

    def __init__(self, emb_dim: int, scale: float = 16.0) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(emb_dim // 8) * scale)
        self.mlp = nn.Sequential(nn.Linear(emb_dim // 4, emb_dim), nn.Mish(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = 2 * math.pi * t[:, None] * self.freqs[None]
        return self.mlp(torch.cat([x.cos(), x.sin()], -1))


class ValueCondition(nn.Module):
    """Embeds the window value; a zero mask drops it for classifier-free guidance."""

    def __init__(self, emb_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, emb_dim), nn.LeakyReLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, value: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.mlp(value) * keep


def sinusoidal(positions: int, dim: int, reference: bool = True) -> torch.Tensor:
    """Fixed position embedding, sin then cos; the reference divides by half - 1."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1 if reference else half))
    x = torch.arange(positions)[:, None] * freqs[None]
    return torch.cat([x.sin(), x.cos()], -1)


def modulated_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine, then a per-sample shift and scale (the modulation's 1 + scale)."""
    return torch.addcmul(shift, F.layer_norm(x, x.shape[-1:], eps=1e-6), scale)


class Block(nn.Module):
    """Transformer block with shift/scale/gate modulation; `reference` picks the
    residual-replacing block of the paper's code, else the textbook pre-norm block."""

    def __init__(self, d_model: int, n_heads: int, reference: bool) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.reference = reference
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(approximate="tanh"), nn.Linear(4 * d_model, d_model)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 6 * d_model))

    def modulation(self, c: torch.Tensor) -> Modulation:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, -1)
        return shift1, 1 + scale1, gate1, shift2, 1 + scale2, gate2

    def attention(self, x: torch.Tensor, queries: slice | None = None) -> torch.Tensor:
        """Self-attention; with `queries`, only those positions attend (keys are all)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if queries is not None:
            q = q[:, :, queries]
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, q.shape[2], d)
        return self.proj(out)

    def forward_modulated(self, x: torch.Tensor, mod: Modulation, queries: slice | None = None) -> torch.Tensor:
        """The block given its modulation; with `queries`, only those output positions."""
        shift1, scale1, gate1, shift2, scale2, gate2 = mod
        h = modulated_norm(x, shift1, scale1)
        if self.reference:
            x = h  # the reference replaces the residual stream here
        if queries is not None:
            x = x[:, queries]
        x = torch.addcmul(x, gate1, self.attention(h, queries))
        h = self.mlp(modulated_norm(x, shift2, scale2))
        return torch.addcmul(x, gate2, h)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.forward_modulated(x, self.modulation(c))


class DiT1d(nn.Module):
    """Predicts the rectified-flow velocity of a (batch, points, obs_dim) plan."""

    pos: torch.Tensor

    def __init__(
        self, obs_dim: int, points: int, emb_dim: int, d_model: int, n_heads: int, depth: int, block: str = "reference"
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; expected one of {', '.join(BLOCKS)}")
        reference = block == "reference"
        self.x_proj = nn.Linear(obs_dim, d_model)
        self.register_buffer("pos", sinusoidal(points, d_model, reference))
        self.time = FourierTime(emb_dim)
        self.cond = ValueCondition(emb_dim)
        mapping = [nn.Linear(emb_dim, d_model), nn.Mish(), nn.Linear(d_model, d_model)]
        self.t_proj = nn.Sequential(*mapping, *([nn.Mish()] if reference else []))
        self.blocks = nn.ModuleList(Block(d_model, n_heads, reference) for _ in range(depth))
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 2 * d_model))
        self.out = nn.Linear(d_model, obs_dim)
        if reference:
            self._reference_init()
        blocks = cast("list[Block]", self.blocks)
        zeroed = cast("list[nn.Linear]", [self.final_ada[1], self.out, *(block.ada[1] for block in blocks)])
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _reference_init(self) -> None:
        """Xavier-uniform weights and zero biases on the DiT's Linears (the value
        condition keeps PyTorch's default), the mapping MLP from N(0, 0.02)."""
        condition = set(self.cond.modules())
        for m in self.modules():
            if isinstance(m, nn.Linear) and m not in condition:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for layer in cast("tuple[nn.Linear, nn.Linear]", (self.t_proj[0], self.t_proj[2])):
            nn.init.normal_(layer.weight, std=0.02)

    def embed(self, t: torch.Tensor, value: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The conditioning vector of (time, value); keep 0 drops the value."""
        return self.t_proj(self.time(t) + self.cond(value, keep))

    def modulations(self, c: torch.Tensor) -> Modulations:
        shift, scale = self.final_ada(c)[:, None].chunk(2, -1)
        return [block.modulation(c) for block in cast("list[Block]", self.blocks)], (shift, 1 + scale)

    def forward_modulated(self, x: torch.Tensor, mods: Modulations, queries: slice | None = None) -> torch.Tensor:
        """Velocity given precomputed modulations; with `queries`, only at those points
        (the last block then computes only their outputs)."""
        block_mods, (shift, scale) = mods
        h = self.x_proj(x) + self.pos
        last = len(self.blocks) - 1
        for i, (block, mod) in enumerate(zip(cast("list[Block]", self.blocks), block_mods)):
            h = block.forward_modulated(h, mod, queries if i == last else None)
        return self.out(modulated_norm(h, shift, scale))

    def forward(self, x: torch.Tensor, t: torch.Tensor, value: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x (B, P, o); t (B,); value (B, 1); keep (B, 1): 1 keeps the condition, 0 drops it."""
        return self.forward_modulated(x, self.modulations(self.embed(t, value, keep)))


class InverseDynamics(nn.Module):
    """(obs, next_obs) -> action in [-1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * obs_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, act_dim),
            nn.Tanh(),
        )

    def forward(self, obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, next_obs], -1))
