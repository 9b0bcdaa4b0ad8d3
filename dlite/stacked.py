"""Every plan level's flow loss as one batched computation: each layer one kernel for all
levels instead of one per level.

The levels share one architecture and differ only in their number of points. Their weights
live stacked along a level axis, one trainable tensor per parameter name and group of levels,
and each level's own parameters become aliases of its slice: the planner, the EMA, `state_dict`
and checkpoints see the per-level layout they always had (old checkpoints load as they are,
`load_state_dict` writes through the aliases), while a step runs every Linear as one batched
matmul with no copy of the weights. Plans are padded to the longest level of a group, the
padded points masked out of attention and of the loss. Noise, times and condition dropout are
drawn per level in the per-level order (`flow.flow_loss`'s), so for one RNG state both give the
same losses and gradients up to floating-point rounding. The optimiser's state is kept per
stacked tensor and converted to and from the per-level layout in checkpoints
(`optimizer_state_to_levels` / `_from_levels`), so a run resumes on either path.

On a GPU a step is bound by kernel launches, so all levels form one group and padding costs
nothing; on a CPU the arithmetic is what counts, so levels are grouped by their number of
points and nothing is padded (5, 5, 9 makes two groups).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from dlite.dit import DiT1d, modulated_norm


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (G, ..., in) through G Linear layers at once: weight (G, out, in), bias (G, out)."""
    g, *mid, n_in = x.shape
    out = torch.baddbmm(bias[:, None], x.reshape(g, -1, n_in), weight.transpose(1, 2))
    return out.reshape(g, *mid, weight.shape[1])


def pads(device: torch.device) -> bool:
    """Whether levels of different lengths are padded into one group on `device` (see above)."""
    return device.type == "cuda"


def groups_of(horizons: tuple[int, ...], pad: bool) -> list[list[int]]:
    """Level indices trained together: all of them (`pad`), or those with equal points."""
    if pad:
        return [list(range(len(horizons)))]
    by_points: dict[int, list[int]] = {}
    for level, points in enumerate(horizons):
        by_points.setdefault(points, []).append(level)
    return list(by_points.values())


def _alias(net: nn.Module, name: str, tensor: torch.Tensor, buffer: bool = False) -> None:
    """Make `net`'s parameter (an untrained one) or buffer `name` an alias of `tensor`, a slice of a
    stacked one: what `load_state_dict` writes into it lands in the stacked tensor."""
    owner, _, leaf = name.rpartition(".")
    module = net.get_submodule(owner) if owner else net
    if buffer:
        module._buffers[leaf] = tensor
    else:
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


def _stacked_buffer(nets: list[DiT1d], name: str, width: int | None = None) -> torch.Tensor:
    """One buffer of every net stacked (zero-padded along its first axis to `width`), the nets'
    own buffers turned into aliases of their slices."""
    own = [n.get_buffer(name) for n in nets]
    rows = own if width is None else [F.pad(b, (0, 0, 0, width - b.shape[0])) for b in own]
    stacked = torch.stack(rows)
    for row, (net, b) in enumerate(zip(nets, own)):
        _alias(net, name, stacked[row, : b.shape[0]], buffer=True)
    return stacked


class _Group:
    """Levels padded to one length: their weights stacked (the trained tensors) and their
    constant tensors stacked once."""

    def __init__(
        self,
        nets: list[DiT1d],
        levels: list[int],
        horizons: tuple[int, ...],
        masks: list[torch.Tensor],
        weights: list[torch.Tensor],
    ) -> None:
        self.nets, self.levels = nets, levels
        self.points = [horizons[i] for i in levels]
        self.width = max(self.points)
        padding = [self.width - p for p in self.points]
        self.names = [name for name, _ in nets[0].named_parameters()]
        self.weights: dict[str, nn.Parameter] = {}
        for name in self.names:
            stacked = nn.Parameter(torch.stack([n.get_parameter(name).detach() for n in nets]))
            self.weights[name] = stacked
            for row, net in enumerate(nets):
                _alias(net, name, stacked.data[row])
        self.pos = _stacked_buffer(nets, "pos", self.width)  # (G, P, d)
        self.freqs = _stacked_buffer(nets, "time.freqs")  # (G, emb/8)
        # padded points are "given": they never move, and weigh nothing in the loss
        self.fixed = torch.stack([F.pad(masks[i], (0, 0, 0, k), value=1.0) for i, k in zip(levels, padding)])
        self.loss_weight = torch.stack(
            [F.pad(weights[i] * (1 - masks[i]), (0, 0, 0, k)) for i, k in zip(levels, padding)]
        )
        self.sizes = torch.tensor([float(p) for p in self.points], device=self.pos.device)
        self.keys = (
            None
            if not any(padding)
            else torch.stack(  # (G, 1, 1, 1, P): which keys are real
                [torch.arange(self.width, device=self.pos.device) < p for p in self.points]
            )[:, None, None, None]
        )
        self.reference = cast(bool, nets[0].blocks[0].reference)
        self.n_heads = cast(int, nets[0].blocks[0].n_heads)
        self.depth = len(nets[0].blocks)
        self.mish_end = isinstance(nets[0].t_proj[-1], nn.Mish)

    def pad(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Per-level (B, P_l, o) tensors of this group as one (G, B, P, o), zero-padded."""
        return torch.stack([F.pad(tensors[i], (0, 0, 0, self.width - p)) for i, p in zip(self.levels, self.points)])

    def velocity(self, x: torch.Tensor, t: torch.Tensor, value: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """DiT1d's forward for every level of the group: x (G, B, P, o), t (G, B), value and keep (G, B, 1)."""
        w = self.weights

        def lin(h: torch.Tensor, name: str) -> torch.Tensor:
            return _linear(h, w[f"{name}.weight"], w[f"{name}.bias"])

        angle = 2 * math.pi * t[..., None] * self.freqs[:, None]
        time = lin(F.mish(lin(torch.cat([angle.cos(), angle.sin()], -1), "time.mlp.0")), "time.mlp.2")
        cond = lin(F.leaky_relu(lin(value, "cond.mlp.0")), "cond.mlp.2") * keep
        c = lin(F.mish(lin(time + cond, "t_proj.0")), "t_proj.2")
        c = F.silu(F.mish(c) if self.mish_end else c)  # every modulation starts with SiLU
        g, b, p, _ = x.shape
        mask = None if self.keys is None else self.keys.expand(g, b, 1, 1, p).reshape(g * b, 1, 1, p)
        h = lin(x, "x_proj") + self.pos[:, None]
        for k in range(self.depth):
            shift1, scale1, gate1, shift2, scale2, gate2 = lin(c, f"blocks.{k}.ada.1")[:, :, None].chunk(6, -1)
            normed = modulated_norm(h, shift1, 1 + scale1)
            if self.reference:
                h = normed  # the reference replaces the residual stream here
            d = normed.shape[-1]
            # (G*B, heads, P, d/heads): the 4-D layout the fused attention kernels take
            q, kk, v = (
                lin(normed, f"blocks.{k}.qkv").view(g * b, p, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
            )
            attn = F.scaled_dot_product_attention(q, kk, v, attn_mask=mask).transpose(1, 2).reshape(g, b, p, d)
            h = torch.addcmul(h, gate1, lin(attn, f"blocks.{k}.proj"))
            mlp = lin(
                F.gelu(lin(modulated_norm(h, shift2, 1 + scale2), f"blocks.{k}.mlp.0"), approximate="tanh"),
                f"blocks.{k}.mlp.2",
            )
            h = torch.addcmul(h, gate2, mlp)
        shift, scale = lin(c, "final_ada.1")[:, :, None].chunk(2, -1)
        return lin(modulated_norm(h, shift, 1 + scale), "out")


class StackedLevels:
    """The level models' weights stacked and their flow losses in one computation per group
    (see the module docstring). Building it turns `levels`' parameters into aliases: train
    `parameters()` from then on."""

    def __init__(
        self,
        levels: nn.ModuleList,
        horizons: tuple[int, ...],
        masks: list[torch.Tensor],
        weights: list[torch.Tensor],
        pad: bool,
    ) -> None:
        self.n_levels = len(horizons)
        self.groups = [
            _Group(cast("list[DiT1d]", [levels[i] for i in g]), g, horizons, masks, weights)
            for g in groups_of(horizons, pad)
        ]
        # per-level parameter index (the order of levels.parameters()) -> (stacked index, row)
        stacked = {
            (group.levels[row], name): (k, row)
            for k, (group, name) in enumerate((g, name) for g in self.groups for name in g.names)
            for row in range(len(group.levels))
        }
        self._slots = [
            stacked[level, name] for level in range(self.n_levels) for name, _ in levels[level].named_parameters()
        ]

    def parameters(self) -> list[nn.Parameter]:
        """The trained tensors: one per group and parameter name."""
        return [w for g in self.groups for w in g.weights.values()]

    def per_level(self, stacked: list[torch.Tensor]) -> list[torch.Tensor]:
        """Tensors aligned with `parameters()` (their gradients, say) as per-level ones, in the
        order of the levels' own parameters: what a comparison with the per-level step needs."""
        return [stacked[k][row] for k, row in self._slots]

    def optimizer_state_to_levels(self, state: dict[str, Any]) -> dict[str, Any]:
        """An optimiser's state over `parameters()` in the layout of one over the levels'
        parameters, as a per-level (eager) step would have saved it."""
        per_param = state["state"]
        # each level gets its own step count: a shared one would be stepped once per level on resume
        levels = {
            i: {
                key: (v[row] if v.dim() > 0 else v.clone()) if torch.is_tensor(v) else v
                for key, v in per_param[k].items()
            }
            for i, (k, row) in enumerate(self._slots)
            if k in per_param
        }
        return {
            "state": levels,
            "param_groups": [{**g, "params": list(range(len(self._slots)))} for g in state["param_groups"]],
        }

    def optimizer_state_from_levels(self, state: dict[str, Any]) -> dict[str, Any]:
        """The inverse: a per-level optimiser's state for an optimiser over `parameters()`."""
        per_level = state["state"]
        rows: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        for i, (k, row) in enumerate(self._slots):
            if i in per_level:
                rows.setdefault(k, []).append((row, per_level[i]))
        stacked = {}
        for k, found in rows.items():
            found.sort(key=lambda item: item[0])
            first = found[0][1]
            stacked[k] = {
                key: torch.stack([s[key] for _, s in found]) if torch.is_tensor(v) and v.dim() > 0 else v
                for key, v in first.items()
            }
        return {
            "state": stacked,
            "param_groups": [{**g, "params": list(range(len(self.parameters())))} for g in state["param_groups"]],
        }

    def losses(
        self,
        x0: list[torch.Tensor],
        values: list[torch.Tensor],
        label_dropout: float,
        x1: list[torch.Tensor] | None = None,
        conditional: bool = True,
    ) -> torch.Tensor:
        """Each level's flow loss (`flow.flow_loss` for every level, as one tensor (L,)), drawing
        the same random numbers in the same order: per level the noise (unless `x1` is
        given), then the times, then the dropout of the condition."""
        noise, times, keeps = [], [], []
        for level, points in enumerate(x0):
            b = points.shape[0]
            noise.append(torch.randn_like(points) if x1 is None else x1[level])
            times.append(torch.rand(b, device=points.device))
            keep = (torch.rand(b, 1, device=points.device) >= label_dropout).to(points.dtype)
            keeps.append(keep if conditional else torch.zeros_like(keep))
        out: list[torch.Tensor | None] = [None] * self.n_levels
        for group in self.groups:
            a, n = group.pad(x0), group.pad(noise)
            t = torch.stack([times[i] for i in group.levels])
            xt = torch.lerp(a, n, t[..., None, None])
            xt = xt * (1 - group.fixed[:, None]) + a * group.fixed[:, None]
            pred = group.velocity(
                xt, t, torch.stack([values[i] for i in group.levels]), torch.stack([keeps[i] for i in group.levels])
            )
            err = ((pred.float() - (a - n)) ** 2 * group.loss_weight[:, None]).sum((1, 2, 3))
            mean = err / (group.sizes * a.shape[1] * a.shape[3])
            for i, level in enumerate(group.levels):
                out[level] = mean[i]
        return torch.stack(out)  # type: ignore[arg-type]  # every level is in a group
