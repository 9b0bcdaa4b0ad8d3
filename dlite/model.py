"""The trained object: one model per plan level, their EMA copies, inverse dynamics and
the observation normaliser, built from one config."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dlite.config import Config
from dlite.dit import DiT1d, InverseDynamics


class DiffuserLite(nn.Module):
    obs_mean: torch.Tensor
    obs_std: torch.Tensor

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.levels = nn.ModuleList(
            DiT1d(obs_dim, points, cfg.emb_dim, cfg.d_model, cfg.n_heads, cfg.depth, cfg.block)
            for points in cfg.horizons
        )
        self.ema_levels = copy.deepcopy(self.levels).requires_grad_(False)
        self.invdyn = InverseDynamics(obs_dim, act_dim, cfg.invdyn_hidden, cfg.invdyn_dropout)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))

    @torch.no_grad()
    def update_ema(self, rate: float) -> None:
        """ema <- rate * ema + (1 - rate) * weights, as one fused op per tensor list."""
        ema: list[torch.Tensor] = list(self.ema_levels.parameters())
        torch._foreach_lerp_(ema, list(self.levels.parameters()), 1.0 - rate)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def denormalize(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw observations of normalised ones: plans are made in normalised units."""
        return obs * self.obs_std + self.obs_mean
