"""DiT-1d: a small diffusion transformer over the points of one plan level.

Time and condition enter through adaLN-Zero modulation, so each block starts as
the identity and the output layer starts at zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FourierTime(nn.Module):
    """Random Fourier features of t in [0, 1] (fixed frequencies, scale 16), then an MLP."""

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


def sinusoidal(positions: int, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    x = torch.arange(positions)[:, None] * freqs[None]
    return torch.cat([x.sin(), x.cos()], -1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-Zero shift/scale/gate."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * d_model, d_model))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 6 * d_model))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, -1)
        x = x + gate1[:, None] * self.attention(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT1d(nn.Module):
    """Predicts the rectified-flow velocity of a (batch, points, obs_dim) plan."""

    def __init__(self, obs_dim: int, points: int, emb_dim: int, d_model: int, n_heads: int, depth: int) -> None:
        super().__init__()
        self.x_proj = nn.Linear(obs_dim, d_model)
        self.register_buffer("pos", sinusoidal(points, d_model))
        self.time = FourierTime(emb_dim)
        self.cond = ValueCondition(emb_dim)
        self.t_proj = nn.Sequential(nn.Linear(emb_dim, d_model), nn.Mish(), nn.Linear(d_model, d_model))
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(depth))
        self.final_norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 2 * d_model))
        self.out = nn.Linear(d_model, obs_dim)
        for layer in (self.final_ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, value: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x (B, P, o); t (B,); value (B, 1); keep (B, 1): 1 keeps the condition, 0 drops it."""
        c = self.t_proj(self.time(t) + self.cond(value, keep))
        h = self.x_proj(x) + self.pos
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, -1)
        return self.out(modulate(self.final_norm(h), shift, scale))


class InverseDynamics(nn.Module):
    """(obs, next_obs) -> action in [-1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * obs_dim, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, act_dim), nn.Tanh())

    def forward(self, obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, next_obs], -1))
