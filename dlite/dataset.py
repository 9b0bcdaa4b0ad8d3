"""Training windows for every plan level, held entirely on the training device.

Episodes are laid out as padded (episodes, length, dim) tensors and every window
start's value is computed once, so a batch for all levels is a few gathers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dlite.config import D4RL_EPISODE_STEPS, Config
from dlite.d4rl import DatasetError, RawDataset

"""Episodes are padded to at least this length, as in the reference: a window may start
at any step up to min(len - 1, pad - span) and run into the zero padding."""


@dataclass
class Normalizer:
    """Per-dimension observation statistics; they travel in every checkpoint."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, observations: np.ndarray) -> Normalizer:
        std = observations.std(0)
        return cls(observations.mean(0).astype(np.float32), np.where(std == 0, 1.0, std).astype(np.float32))

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def split_episodes(raw: RawDataset, terminal_penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """Episode index and step-within-episode of every transition, and penalised rewards."""
    ends = raw.terminals | raw.timeouts
    ends[-1] = True
    episode = np.concatenate([[0], np.cumsum(ends[:-1])])
    starts = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
    position = np.arange(len(ends)) - starts[episode]
    rewards = np.where(raw.terminals & ~raw.timeouts, terminal_penalty, raw.rewards).astype(np.float32)
    return np.stack([episode, position]), rewards


def discounted_values(rewards: np.ndarray, discount: float) -> np.ndarray:
    """Reverse discounted cumulative sum along axis 1: value of starting at each step."""
    values = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[0], dtype=np.float64)
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + discount * running
        values[:, t] = running
    return values.astype(np.float32)


@dataclass
class Batch:
    """One gradient step's data: per level the window points and their values, plus
    inverse-dynamics pairs with a mask for pairs that run past an episode's end."""

    points: list[torch.Tensor]
    values: list[torch.Tensor]
    obs: torch.Tensor
    next_obs: torch.Tensor
    act: torch.Tensor
    pair_mask: torch.Tensor


class WindowDataset:
    """All windows of all levels, sampled uniformly over valid (episode, start) pairs."""

    def __init__(self, raw: RawDataset, cfg: Config, device: torch.device | str = "cpu") -> None:
        self.obs_dim = raw.observations.shape[1]
        self.act_dim = raw.actions.shape[1]
        self.fingerprint = raw.fingerprint()
        self.normalizer = Normalizer.fit(raw.observations)
        (episode, position), rewards = split_episodes(raw, cfg.terminal_penalty)
        lengths = np.bincount(episode)
        self.pad = max(int(lengths.max()), D4RL_EPISODE_STEPS)
        n_ep = len(lengths)
        obs = np.zeros((n_ep, self.pad, self.obs_dim), np.float32)
        act = np.zeros((n_ep, self.pad, self.act_dim), np.float32)
        rew = np.zeros((n_ep, self.pad), np.float32)
        obs[episode, position] = self.normalizer.normalize(raw.observations)
        act[episode, position] = raw.actions
        rew[episode, position] = rewards
        values = discounted_values(rew, cfg.discount) / cfg.return_scale

        self.device = torch.device(device)
        self.n_episodes = n_ep
        self.lengths = lengths
        self.obs = torch.from_numpy(obs.reshape(-1, self.obs_dim)).to(self.device)
        self.act = torch.from_numpy(act.reshape(-1, self.act_dim)).to(self.device)
        self.values = torch.from_numpy(values.reshape(-1)).to(self.device)
        self.episode_lengths = torch.from_numpy(lengths).to(self.device)
        self.spans, self.strides, self.horizons = cfg.spans, cfg.strides, cfg.horizons
        self.starts = [self._valid_starts(span) for span in self.spans]
        self.offsets = [torch.arange(h, device=self.device) * s for h, s in zip(self.horizons, self.strides)]
        self.last_offsets = torch.arange(self.spans[-1], device=self.device)

    def _valid_starts(self, span: int) -> torch.Tensor:
        """Flat indices of the starts 0 .. min(len-1, pad-span) of every episode."""
        last = np.minimum(self.lengths - 1, self.pad - span)
        flat = [ep * self.pad + np.arange(n + 1) for ep, n in enumerate(last)]
        starts = np.concatenate(flat)
        if len(starts) == 0:
            raise DatasetError(f"no window of {span} steps fits in the dataset")
        return torch.from_numpy(starts).to(self.device)

    def sample_level(self, level: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windows of one level: points (B, horizon, obs_dim), values (B, 1) and flat starts."""
        starts = self.starts[level]
        start = starts[torch.randint(len(starts), (batch_size,), device=self.device)]
        return self.obs[start[:, None] + self.offsets[level]], self.values[start][:, None], start

    def sample(self, batch_size: int) -> Batch:
        """Independent windows per level from the global torch RNG (kept for exact resume)."""
        points, values = [], []
        for level in range(len(self.starts)):
            level_points, level_values, start = self.sample_level(level, batch_size)
            points.append(level_points)
            values.append(level_values)
        window = start[:, None] + self.last_offsets
        pairs = window[:, :-1]
        valid = pairs % self.pad + 1 < self.episode_lengths[pairs // self.pad]
        return Batch(
            points=points,
            values=values,
            obs=self.obs[pairs].reshape(-1, self.obs_dim),
            next_obs=self.obs[window[:, 1:]].reshape(-1, self.obs_dim),
            act=self.act[pairs].reshape(-1, self.act_dim),
            pair_mask=valid.reshape(-1, 1).float(),
        )
