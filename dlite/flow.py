"""Rectified flow for one plan level: the training loss and the Euler sampler.

Noise is x1 at t=1, data x0 at t=0; the network predicts the velocity x0 - x1,
so sampling walks t from 1 down to 0 and lands on a plan.
"""

from __future__ import annotations

import torch

from dlite.dit import DiT1d


def fix_mask(points: int, obs_dim: int, level: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """1 where a point is given: level 0 fixes the current state, finer levels both ends."""
    mask = torch.zeros(points, obs_dim, device=device)
    mask[0] = 1
    if level > 0:
        mask[-1] = 1
    return mask


def loss_weight(points: int, obs_dim: int, next_obs_weight: float, device: torch.device | str = "cpu") -> torch.Tensor:
    weight = torch.ones(points, obs_dim, device=device)
    weight[1] = next_obs_weight
    return weight


def flow_loss(
    net: DiT1d,
    x0: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    label_dropout: float,
    x1: torch.Tensor | None = None,
    conditional: bool = True,
) -> torch.Tensor:
    """Squared velocity error on the free points, averaged over every element.

    R1 draws fresh noise; reflow passes the stored noise `x1` the plan was integrated
    from, and `conditional=False` for its unconditional batches (condition always dropped).
    """
    b = x0.shape[0]
    x1 = torch.randn_like(x0) if x1 is None else x1
    t = torch.rand(b, device=x0.device)
    xt = x0 + t[:, None, None] * (x1 - x0)
    xt = xt * (1 - mask) + x0 * mask
    keep = (torch.rand(b, 1, device=x0.device) >= label_dropout).to(x0.dtype)
    if not conditional:
        keep = torch.zeros_like(keep)
    pred = net(xt, t, value, keep)
    return ((pred.float() - (x0 - x1)) ** 2 * weight * (1 - mask)).mean()


def time_grid(steps: int) -> list[float]:
    """t_k = (k / n)^1.5 for k = n .. 0: finer steps near the data end."""
    return [(k / steps) ** 1.5 for k in range(steps, -1, -1)]


@torch.no_grad()
def sample(
    net: DiT1d,
    prior: torch.Tensor,
    mask: torch.Tensor,
    value: torch.Tensor,
    steps: int,
    temperature: float,
    w_cfg: float,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Euler integration from temperature-scaled noise; fixed points re-imposed each step.

    prior holds the fixed points (zeros elsewhere). With w_cfg != 1 the conditional and
    unconditional velocities come from one batched forward; w_cfg = 0 runs only the
    unconditional branch. `noise` (default: drawn here) is the standard normal start.
    """
    b = prior.shape[0]
    noise = torch.randn_like(prior) if noise is None else noise
    x = temperature * noise
    x = x * (1 - mask) + prior * mask
    guided = w_cfg not in (0.0, 1.0)
    keep = torch.full((b, 1), float(w_cfg != 0.0), device=prior.device, dtype=prior.dtype)
    if guided:
        keep = torch.cat([keep, torch.zeros_like(keep)])
        value = torch.cat([value, value])
    grid = time_grid(steps)
    for t_now, t_next in zip(grid[:-1], grid[1:]):
        t = torch.full((keep.shape[0],), t_now, device=prior.device, dtype=prior.dtype)
        v = net(torch.cat([x, x]) if guided else x, t, value, keep)
        if guided:
            v = w_cfg * v[:b] + (1 - w_cfg) * v[b:]
        x = x + (t_now - t_next) * v
        x = x * (1 - mask) + prior * mask
    return x
