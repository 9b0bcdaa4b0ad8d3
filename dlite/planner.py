"""Planning one decision for a batch of environments: three levels coarse to fine,
then inverse dynamics on the first two points of the finest plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlite import checkpoint
from dlite.config import Config
from dlite.flow import fix_mask, sample
from dlite.model import DiffuserLite


class Planner:
    """Turns raw observations (N, obs_dim) into actions (N, act_dim) with the EMA weights."""

    def __init__(self, model: DiffuserLite, cfg: Config, w_cfg: float | None = None,
                 target_return: float | None = None, temperature: float | None = None,
                 sampling_steps: int | None = None) -> None:
        self.model = model.eval()
        self.cfg = cfg
        self.device = next(model.parameters()).device
        self.w_cfg = cfg.planning_w_cfg if w_cfg is None else w_cfg
        self.target_return = cfg.planning_target_return if target_return is None else target_return
        self.temperature = cfg.temperature if temperature is None else temperature
        self.sampling_steps = cfg.sampling_steps if sampling_steps is None else sampling_steps
        self.masks = [fix_mask(h, model.obs_dim, i, self.device) for i, h in enumerate(cfg.horizons)]

    @classmethod
    def from_checkpoint(cls, path: Path, device: str | torch.device = "cpu", **overrides: float | None) -> "Planner":
        state = checkpoint.read(path, device)
        cfg = checkpoint.config_of(state)
        model = DiffuserLite(cfg, state["dataset"]["obs_dim"], state["dataset"]["act_dim"]).to(device)
        model.load_state_dict(state["model"])
        return cls(model, cfg, **overrides)

    @torch.no_grad()
    def plan(self, obs: torch.Tensor) -> list[torch.Tensor]:
        """The plans of every level for normalised observations (N, obs_dim)."""
        n = obs.shape[0]
        value = torch.full((n, 1), self.target_return, device=self.device)
        start, end = obs, None
        plans = []
        for level, (net, mask, points) in enumerate(zip(self.model.ema_levels, self.masks, self.cfg.horizons)):
            prior = torch.zeros(n, points, self.model.obs_dim, device=self.device)
            prior[:, 0] = start
            if level > 0:
                prior[:, -1] = end
            x = sample(net, prior, mask, value, self.sampling_steps, self.temperature, self.w_cfg)
            plans.append(x)
            start, end = x[:, 0], x[:, 1]
        return plans

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        raw = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        if raw.ndim != 2 or raw.shape[1] != self.model.obs_dim:
            raise ValueError(f"expected observations of shape (N, {self.model.obs_dim}), got {tuple(raw.shape)}")
        finest = self.plan(self.model.normalize(raw))[-1]
        return self.model.invdyn(finest[:, 0], finest[:, 1]).cpu().numpy()
