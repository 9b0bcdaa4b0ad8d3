"""Planning one decision for a batch of environments: every level coarse to fine,
then inverse dynamics on the first two points of the finest plan.

With a fixed target return, everything that depends only on (time, condition) — the
time and value embeddings and every block's modulation — is the same at every decision,
so the planner computes it once per sampling step and a decision runs only the plan's
own forward passes. Given points never move, so the last block of each forward pass
computes only the free points, and in the last Euler step of a level only point 1 (the
next level's end point, or the action's next state).
`plan_plain` keeps the textbook loop over `flow.sample`; a test holds the two equal.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, cast

import numpy as np
import torch

from dlite import checkpoint, packed
from dlite.config import Config
from dlite.dit import DiT1d, Modulations
from dlite.flow import fix_mask, sample, time_grid
from dlite.model import DiffuserLite

Variant = Literal["R1", "R2"]
Net = TypeVar("Net", bound=torch.nn.Module)


@dataclass
class _Step:
    """One Euler step of one level: the network's modulations and t_now - t_next."""

    mods: Modulations
    dt: float


@dataclass
class _Level:
    net: DiT1d
    points: int
    steps: list[_Step]
    noise_scale: torch.Tensor  # temperature where free, 0 where fixed
    fixes_end: bool

    @property
    def free(self) -> slice:
        """The points the flow moves: all but the given start (and end, on finer levels)."""
        return slice(1, self.points - 1 if self.fixes_end else self.points)


def _cast(mods: Modulations, dtype: torch.dtype) -> Modulations:
    blocks, (shift, scale) = mods
    return [tuple(m.to(dtype) for m in block) for block in blocks], (shift.to(dtype), scale.to(dtype))


def checkpoint_model(path: Path, device: str | torch.device = "cpu") -> tuple[DiffuserLite, Config, Variant]:
    """The model of an R1 or R2 checkpoint, its settings and which variant it is."""
    state = checkpoint.read(path, device)
    cfg = checkpoint.config_of(state)
    model = DiffuserLite(cfg, state["dataset"]["obs_dim"], state["dataset"]["act_dim"]).to(device)
    model.load_state_dict(state["model"])
    return model, cfg, checkpoint.variant_of(state)  # type: ignore[return-value]


class Planner:
    """Turns raw observations (N, obs_dim) into actions (N, act_dim) with the EMA weights.

    `variant` picks the defaults: R1 plans with the config's sampling steps, target return
    and guidance; R2 (reflowed weights) with its one step and the task's R2 values.
    `compile` wraps a decision in torch.compile; on CUDA, `cuda_graph` captures a whole
    decision per batch size and replays it (the standard torch.cuda.graphs mechanism).
    `dtype=torch.bfloat16` plans with bf16 copies of the networks (faster on a CPU with
    AVX512-BF16; not the paper's precision, so never the default). On a CPU the planning
    copies have oneDNN-packed weights (`dlite.packed`); `pack=False` keeps PyTorch's Linear
    (for counting FLOPs, which the packed op does not report). `plain=True` makes `act` the
    textbook loop: the last fallback when no fast path passes the device check.
    """

    def __init__(
        self,
        model: DiffuserLite,
        cfg: Config,
        w_cfg: float | None = None,
        target_return: float | None = None,
        temperature: float | None = None,
        sampling_steps: int | None = None,
        variant: Variant = "R1",
        compile: bool = False,
        cuda_graph: bool = False,
        dtype: torch.dtype = torch.float32,
        pack: bool = True,
        plain: bool = False,
    ) -> None:
        self.model = model.eval()
        self.plain = plain
        self.dtype = dtype
        self.cfg = cfg
        self.variant = variant
        self.device = next(model.parameters()).device
        r2 = variant == "R2"
        self.w_cfg = (cfg.r2_planning_w_cfg if r2 else cfg.planning_w_cfg) if w_cfg is None else w_cfg
        self.target_return = (
            (cfg.r2_planning_target_return if r2 else cfg.planning_target_return)
            if target_return is None
            else target_return
        )
        self.temperature = cfg.temperature if temperature is None else temperature
        self.sampling_steps = (
            (cfg.r2_sampling_steps if r2 else cfg.sampling_steps) if sampling_steps is None else sampling_steps
        )
        self.masks = [fix_mask(h, model.obs_dim, i, self.device) for i, h in enumerate(cfg.horizons)]
        # compile packs weights its own way
        self.packed = pack and not compile and packed.available(self.device, dtype)
        self.levels = self._precompute()
        self.invdyn = self._for_planning(model.invdyn)
        self._expanded: dict[int, list[list[Modulations]]] = {}
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self._decide: Callable[[torch.Tensor, list[list[Modulations]]], torch.Tensor] = self._decide_eager
        self.compiled = compile
        if compile:
            # on CUDA, graphs come from our own capture or from compile's reduce-overhead mode;
            # fallback_random draws PyTorch's own noise, so compiled plans equal eager ones
            mode = (
                ("max-autotune-no-cudagraphs" if self.cuda_graph else "reduce-overhead")
                if self.device.type == "cuda"
                else "default"
            )
            self._decide = torch.compile(
                self._decide_eager,
                dynamic=False,
                options={**torch._inductor.list_mode_options(mode), "fallback_random": True},
            )
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_checkpoint(cls, path: Path, device: str | torch.device = "cpu", **overrides: object) -> Planner:
        """A planner for an R1 or R2 checkpoint; the file says which it is."""
        model, cfg, variant = checkpoint_model(path, device)
        return cls(model, cfg, variant=variant, **overrides)  # type: ignore[arg-type]

    @property
    def guided(self) -> bool:
        return self.w_cfg not in (0.0, 1.0)

    @torch.inference_mode()
    def _precompute(self) -> list[_Level]:
        """Per level and Euler step, the modulations of the (conditional[, unconditional])
        branch for the fixed target return: the part of a forward pass that is the same
        at every decision."""
        grid = time_grid(self.sampling_steps)
        keep = [[float(self.w_cfg != 0.0)]] + ([[0.0]] if self.guided else [])
        keep_t = torch.tensor(keep, device=self.device)
        value = torch.full_like(keep_t, self.target_return)
        levels = []
        for level, (net, mask, points) in enumerate(
            zip(cast("list[DiT1d]", self.model.ema_levels), self.masks, self.cfg.horizons)
        ):
            steps = []
            for t_now, t_next in zip(grid[:-1], grid[1:]):
                t = torch.full((len(keep),), t_now, device=self.device)
                mods = _cast(net.modulations(net.embed(t, value, keep_t)), self.dtype)
                steps.append(_Step(mods, t_now - t_next))
            levels.append(
                _Level(
                    self._for_planning(net), points, steps, (self.temperature * (1 - mask)).to(self.dtype), level > 0
                )
            )
        return levels

    def _for_planning(self, net: Net) -> Net:
        """The network in the planning dtype, with packed weights on a CPU; the hint is
        the rows of a guided one-environment batch at the finest level."""
        if self.dtype != torch.float32:
            net = copy.deepcopy(net).to(self.dtype)
        return packed.pack(net, 2 * max(self.cfg.horizons)) if self.packed else net

    def _mods_for(self, n: int) -> list[list[Modulations]]:
        """Guided planning runs both branches in one batch of 2n: the modulations are
        repeated to that batch once per batch size, not at every decision."""
        if not self.guided:
            return [[s.mods for s in lv.steps] for lv in self.levels]
        if n not in self._expanded:

            def rep(t: torch.Tensor) -> torch.Tensor:
                return t.repeat_interleave(n, 0)

            self._expanded[n] = [
                [
                    ([tuple(rep(m) for m in block) for block in s.mods[0]], (rep(s.mods[1][0]), rep(s.mods[1][1])))
                    for s in lv.steps
                ]
                for lv in self.levels
            ]
        return self._expanded[n]

    def _velocity(self, net: DiT1d, x: torch.Tensor, mods: Modulations, queries: slice | None = None) -> torch.Tensor:
        if not self.guided:
            return net.forward_modulated(x, mods, queries)
        n = x.shape[0]
        v = net.forward_modulated(torch.cat([x, x]), mods, queries)
        return self.w_cfg * v[:n] + (1 - self.w_cfg) * v[n:]

    def _decide_eager(self, obs: torch.Tensor, mods: list[list[Modulations]]) -> torch.Tensor:
        """Actions for normalised observations (N, obs_dim), given `_mods_for(N)` (made
        outside, so a compiled decision never creates tensors it must keep). Draws the same
        noise, in the same order, as `plan_plain`, so both give the same actions for one
        RNG state."""
        n, o = obs.shape
        end = None
        obs = obs.to(self.dtype)
        for lv, level_mods in zip(self.levels, mods):
            # drawn in fp32 whatever the planning dtype: the same noise as plan_plain's
            noise = torch.randn(n, lv.points, o, device=obs.device)
            x = noise.to(self.dtype) * lv.noise_scale
            x[:, 0] = obs
            if lv.fixes_end:
                x[:, -1] = cast(torch.Tensor, end)
            free = lv.free
            if free.start < free.stop:
                for step, m in zip(lv.steps[:-1], level_mods[:-1]):
                    # given points never move: the last block computes only the free ones
                    x[:, free] += step.dt * self._velocity(lv.net, x, m, free)
                # only point 1 of the last step is used: the next level's end, or the next state
                end = x[:, 1] + lv.steps[-1].dt * self._velocity(lv.net, x, level_mods[-1], slice(1, 2))[:, 0]
            else:  # two given points and nothing between them
                end = x[:, 1]
        return self.invdyn(obs, end).float()

    @torch.inference_mode()
    def plan(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions (N, act_dim) for normalised observations (N, obs_dim)."""
        if self.cuda_graph:
            return self._replay(obs)
        actions = self._decide(obs, self._mods_for(obs.shape[0]))
        return actions.clone() if self.compiled else actions  # compiled outputs may be reused buffers

    def _replay(self, obs: torch.Tensor) -> torch.Tensor:
        """Capture a whole decision once per batch size, then replay it: one launch
        instead of hundreds of small kernels."""
        n = obs.shape[0]
        if n not in self._graphs:
            static_obs, mods = obs.clone(), self._mods_for(n)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up outside the graph (allocator, compile, cuBLAS)
                    self._decide(static_obs, mods)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._decide(static_obs, mods)
            self._graphs[n] = (graph, static_obs, static_out)
        graph, static_obs, static_out = self._graphs[n]
        static_obs.copy_(obs)
        graph.replay()
        return static_out.clone()

    @torch.no_grad()
    def plan_plain(self, obs: torch.Tensor) -> list[torch.Tensor]:
        """The plans of every level for normalised observations (N, obs_dim), by the
        textbook loop (flow.sample per level); the reference the fast path is tested against."""
        n = obs.shape[0]
        value = torch.full((n, 1), self.target_return, device=self.device)
        start, end = obs, None
        plans = []
        for level, (net, mask, points) in enumerate(
            zip(cast("list[DiT1d]", self.model.ema_levels), self.masks, self.cfg.horizons)
        ):
            prior = torch.zeros(n, points, self.model.obs_dim, device=self.device)
            prior[:, 0] = start
            if level > 0:
                prior[:, -1] = cast(torch.Tensor, end)
            x = sample(net, prior, mask, value, self.sampling_steps, self.temperature, self.w_cfg)
            plans.append(x)
            start, end = x[:, 0], x[:, 1]
        return plans

    @torch.no_grad()
    def act_plain(self, obs: np.ndarray) -> np.ndarray:
        finest = self.plan_plain(self._normalized(obs))[-1]
        return self.model.invdyn(finest[:, 0], finest[:, 1]).cpu().numpy()

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.plain:
            return self.act_plain(obs)
        return self.plan(self._normalized(obs)).cpu().numpy()

    def _normalized(self, obs: np.ndarray) -> torch.Tensor:
        raw = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        if raw.ndim != 2 or raw.shape[1] != self.model.obs_dim:
            raise ValueError(f"expected observations of shape (N, {self.model.obs_dim}), got {tuple(raw.shape)}")
        return self.model.normalize(raw)
