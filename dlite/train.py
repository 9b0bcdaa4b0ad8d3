"""Training: `TrainerBase`, what R1 training and reflow (dlite.reflow) share, and `Trainer`,
R1's, where one gradient step updates every level model and the inverse-dynamics model.
Losses stay on the device until the log interval."""

from __future__ import annotations

import contextlib
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F

from dlite import checkpoint, stacked
from dlite.config import Config, level_loss_keys
from dlite.dataset import Batch, WindowDataset
from dlite.dit import DiT1d
from dlite.flow import fix_mask, flow_loss, loss_weight
from dlite.model import DiffuserLite
from dlite.stacked import StackedLevels

BatchT = TypeVar("BatchT")
"""What a trainer's step draws: R1's `Batch`, reflow's `PairBatch`."""


@dataclass
class LogRecord:
    """What a log interval reports: mean losses over the interval and the speed."""

    step: int
    losses: dict[str, float]
    lr: float
    steps_per_s: float
    wall_time: float = field(default_factory=time.time)


class Callback(Protocol):
    def on_log(self, record: LogRecord) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...
    def should_stop(self) -> bool: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """RNG states must be CPU byte tensors, wherever the checkpoint was mapped to."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16 (with a grad scaler); None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass(frozen=True)
class StepPath:
    """How a training step runs; `train_accel` names one, and the device check verifies it
    against eager on the user's device before a run uses it."""

    compile: bool = False
    amp: bool = False
    fused: bool = False
    batched: bool = False
    """All levels in one computation (dlite.stacked) instead of one per level."""


_FAST = {"fused": True, "batched": True}
STEP_PATHS = {
    "eager": StepPath(),
    "fused": StepPath(fused=True),
    "batched": StepPath(**_FAST),
    "compile": StepPath(compile=True, **_FAST),
    "amp": StepPath(amp=True, **_FAST),
    "compile_amp": StepPath(compile=True, amp=True, **_FAST),
}
"""Every training path by name (train_accel's choices but 'auto'); all but eager and fused
batch the levels."""


class TrainerBase(ABC, Generic[BatchT]):
    """What R1 training and reflow share, so a fix to exact resume, saving or the fast paths
    reaches both: the level models with their optimiser, EMA, grad scaler and training path,
    the fit loop, checkpoints and resume. A subclass adds what only it trains, and answers
    the hooks below with the same signatures:

    - `level_lr`, `loss_keys`, `total_steps`, `lr()`: its rate, what it logs, how far it trains;
    - `_sample()`, `_compute_losses(batch)`, `_optimize(losses)`: one step;
    - `_extra_optimizer_state()`, `_load_extra_optimizer_state(state)`, `_origin()`,
      `_check_resumable(state, path)`: what its checkpoints hold beyond the shared state,
      and which ones it may continue.

    Construction seeds, then builds the models: both variants draw the same initial
    weights, so their random streams after it are those of the seed."""

    variant: ClassVar[str]
    """R1 or R2: what the trainer's checkpoints and planners are."""

    def __init__(self, cfg: Config, data: WindowDataset, out_dir: Path | None = None, path: str = "eager") -> None:
        self.cfg, self.data, self.out_dir = cfg, data, out_dir
        self.path = path
        how = STEP_PATHS[path]
        self.device = data.device
        seed_everything(cfg.seed)
        self.model = DiffuserLite(cfg, data.obs_dim, data.act_dim).to(self.device)
        self.model.obs_mean.copy_(torch.from_numpy(data.normalizer.mean))
        self.model.obs_std.copy_(torch.from_numpy(data.normalizer.std))
        self.masks = [fix_mask(h, data.obs_dim, i, self.device) for i, h in enumerate(cfg.horizons)]
        self.weights = [loss_weight(h, data.obs_dim, cfg.next_obs_loss_weight, self.device) for h in cfg.horizons]
        self.stacked = (
            StackedLevels(self.model.levels, cfg.horizons, self.masks, self.weights, pad=stacked.pads(self.device))
            if how.batched
            else None
        )
        self.optim = torch.optim.AdamW(
            self.level_parameters, lr=self.level_lr, weight_decay=cfg.weight_decay, **self.optimizer_kind
        )
        self.amp = amp_dtype(self.device) if how.amp else None
        if how.amp and self.amp is None:
            raise ValueError(f"training path {path!r}: mixed precision needs a CUDA device here, not {self.device}")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.step = 0
        self.loss_sum = torch.zeros(len(self.loss_keys), device=self.device)
        self.loss_count = 0
        self.save_requested = False
        """Set by `request_save`: `fit` writes a checkpoint after the current step."""
        self.protected: Callable[[], Collection[Path]] = tuple
        """Checkpoints `keep_local` must not delete yet: the worker's backup still reads them."""
        self._losses: Callable[[BatchT], torch.Tensor] = self._compute_losses
        self.compiled = how.compile and self.device.type == "cuda"
        if how.compile:
            # a step is ~2,500 small kernels: on CUDA only graphs (reduce-overhead) end launch-bound;
            # fallback_random draws PyTorch's own noise, so compiled losses equal eager ones
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            self._losses = torch.compile(
                self._compute_losses, options={**torch._inductor.list_mode_options(mode), "fallback_random": True}
            )

    # -- the hooks ------------------------------------------------------------------------

    @property
    @abstractmethod
    def level_lr(self) -> float:
        """The level optimiser's rate (at the start, for a schedule)."""

    @property
    @abstractmethod
    def loss_keys(self) -> tuple[str, ...]:
        """What a log record reports, in the order `_compute_losses` stacks them."""

    @property
    @abstractmethod
    def total_steps(self) -> int:
        """The step `fit` trains to by default."""

    @abstractmethod
    def lr(self) -> float:
        """The level rate a log record reports."""

    @abstractmethod
    def _sample(self) -> BatchT:
        """The next step's batch; runs outside the compiled losses, so it may branch on the step."""

    @abstractmethod
    def _compute_losses(self, batch: BatchT) -> torch.Tensor:
        """(len(loss_keys),) losses of `batch`: the function the compiled paths compile."""

    @abstractmethod
    def _optimize(self, losses: torch.Tensor) -> None:
        """Backpropagates `losses` and steps what is still being trained, EMA included."""

    @abstractmethod
    def _extra_optimizer_state(self) -> dict[str, Any]:
        """Checkpoint entries of what this trainer optimises besides the level optimiser."""

    @abstractmethod
    def _load_extra_optimizer_state(self, state: dict[str, Any]) -> None:
        """Restores what `_extra_optimizer_state` saved."""

    @abstractmethod
    def _origin(self) -> dict[str, Any]:
        """Checkpoint entries that say which variant wrote it and from what, beyond config and data."""

    @abstractmethod
    def _check_resumable(self, state: dict[str, Any], path: Path) -> None:
        """Raises CheckpointError for a checkpoint this trainer must not continue."""

    # -- shared -------------------------------------------------------------------------

    @property
    def level_parameters(self) -> list[torch.nn.Parameter]:
        """What the level optimiser trains: the stacked weights when batched, else each level's own."""
        return self.stacked.parameters() if self.stacked else list(self.model.levels.parameters())

    @property
    def optimizer_kind(self) -> dict[str, Any]:
        """fused or foreach (PyTorch's default): one kernel per step for all tensors, or a few."""
        return {"fused": True} if STEP_PATHS[self.path].fused else {"foreach": True}

    def _level_losses(
        self,
        x0: list[torch.Tensor],
        values: list[torch.Tensor],
        x1: list[torch.Tensor] | None = None,
        conditional: bool = True,
    ) -> torch.Tensor:
        """Every level's flow loss, (levels,): batched, or one level after the other."""
        dropout = self.cfg.label_dropout
        if self.stacked:
            return self.stacked.losses(x0, values, dropout, x1, conditional)
        return torch.stack(
            [
                flow_loss(cast(DiT1d, net), a, v, m, w, dropout, None if x1 is None else x1[i], conditional)
                for i, (net, a, v, m, w) in enumerate(zip(self.model.levels, x0, values, self.masks, self.weights))
            ]
        )

    def train_step(self) -> None:
        """One gradient step. No host sync."""
        self.model.train()
        batch = self._sample()
        with self.autocast():
            losses = self._losses(batch)
        self._optimize(losses)
        self.loss_sum += losses.detach().float()
        self.loss_count += 1
        self.step += 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision if asked; with CUDA graphs, marks a new step so the graph's
        outputs from the last one may be overwritten."""
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext()

    def read_losses(self) -> dict[str, float]:
        """Mean losses since the last read: the one device sync of a log interval."""
        means = (self.loss_sum / max(self.loss_count, 1)).tolist()
        self.loss_sum.zero_()
        self.loss_count = 0
        return dict(zip(self.loss_keys, means))

    def fit(self, until: int | None = None, callbacks: tuple[Callback, ...] = ()) -> int:
        """Train to `until` (default: `total_steps`), saving every save interval,
        at the end, on a stop request and when asked (`request_save`). Returns the step reached."""
        cfg = self.cfg
        until = self.total_steps if until is None else until
        tick, tick_step = time.perf_counter(), self.step
        while self.step < until:
            self.train_step()
            if self.step % cfg.log_interval == 0 or self.step == until:
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                record = LogRecord(
                    self.step, self.read_losses(), self.lr(), (self.step - tick_step) / max(now - tick, 1e-9)
                )
                tick, tick_step = now, self.step
                for cb in callbacks:
                    cb.on_log(record)
            stop = any(cb.should_stop() for cb in callbacks)
            if self.out_dir and (
                self.step % cfg.save_interval == 0 or self.step == until or stop or self.save_requested
            ):
                path = self.save()
                for cb in callbacks:
                    cb.on_checkpoint(self.step, path)
            if stop:
                break
        return self.step

    def state_dict(self) -> dict[str, Any]:
        """Everything exact resume needs; the key order is that of the files written so far."""
        return {
            "format": checkpoint.FORMAT,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "dataset": {
                "fingerprint": self.data.fingerprint,
                "obs_dim": self.data.obs_dim,
                "act_dim": self.data.act_dim,
            },
            "model": self.model.state_dict(),
            "optim": self.stacked.optimizer_state_to_levels(self.optim.state_dict())
            if self.stacked
            else self.optim.state_dict(),  # always the per-level layout: any path resumes it
            **self._extra_optimizer_state(),
            "scaler": self.scaler.state_dict(),
            "amp": str(self.amp) if self.amp else None,
            "train_path": self.path,
            "loss_sum": self.loss_sum.cpu(),
            "loss_count": self.loss_count,
            "rng": rng_state(),
            **self._origin(),
        }

    def request_save(self) -> None:
        """Asks `fit` for a checkpoint after the current step, between save intervals: a
        caller backing up on a wall-clock schedule needs one now, not at the next interval."""
        self.save_requested = True

    def save(self) -> Path:
        assert self.out_dir is not None
        self.save_requested = False
        path = checkpoint.write_atomic(self.state_dict(), self.out_dir / checkpoint.checkpoint_name(self.step))
        checkpoint.prune(self.out_dir, self.cfg.keep_local, self.protected())
        return path

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        """Continue from a checkpoint, refusing one of another variant, from other data or
        with other settings (`_check_resumable`), or with other mixed precision."""
        self._check_resumable(state, path)
        amp = str(self.amp) if self.amp else None
        if state.get("amp") != amp:
            raise checkpoint.CheckpointError(
                f"{path} was trained with mixed precision {state.get('amp') or 'off'}, now {amp or 'off'}; "
                f"resume with the same mixed precision (train_accel amp or compile_amp, or neither)"
            )
        self.model.load_state_dict(state["model"])
        saved = state["optim"]
        self._load_optimizer(self.optim, self.stacked.optimizer_state_from_levels(saved) if self.stacked else saved)
        self.scaler.load_state_dict(state["scaler"])
        self.loss_sum = state["loss_sum"].to(self.device)
        self.loss_count = state["loss_count"]
        self.step = state["step"]
        set_rng_state(state["rng"])
        self._load_extra_optimizer_state(state)

    def _load_optimizer(self, optim: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """A saved optimizer brings its fused/foreach flags: this attempt's path (verified on this
        device, perhaps another than the one that saved it) decides instead. The flags are set
        before loading, as they decide where PyTorch puts the step counts (a fused step reads
        them on the GPU, a foreach one on the CPU)."""
        flags = {"fused": self.optimizer_kind.get("fused"), "foreach": self.optimizer_kind.get("foreach")}
        optim.load_state_dict({**state, "param_groups": [{**g, **flags} for g in state["param_groups"]]})

    def resume_latest(self, on_skip: Callable[[Path, checkpoint.CheckpointError], None] | None = None) -> Path | None:
        """Load the newest readable checkpoint of out_dir, if any; returns its path. Broken
        newer files are skipped and passed to `on_skip`."""
        found = checkpoint.newest_readable(self.out_dir, on_skip=on_skip) if self.out_dir else None
        if found is None:
            return None
        self.load_state(*reversed(found))
        return found[0]


class Trainer(TrainerBase[Batch]):
    """R1: trains every level model (AdamW on a cosine schedule) and the inverse-dynamics
    model (Adam), each for its own number of steps, from the same batch."""

    variant = "R1"

    def __init__(self, cfg: Config, data: WindowDataset, out_dir: Path | None = None, path: str = "eager") -> None:
        super().__init__(cfg, data, out_dir, path)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.optim, T_max=cfg.diffusion_gradient_steps)
        self.invdyn_optim = torch.optim.Adam(self.model.invdyn.parameters(), lr=cfg.invdyn_lr, **self.optimizer_kind)

    @property
    def level_lr(self) -> float:
        return self.cfg.diffusion_lr

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """One per level, then inverse dynamics."""
        return level_loss_keys(len(self.cfg.horizons)) + ("invdyn_loss",)

    @property
    def total_steps(self) -> int:
        return self.cfg.total_steps

    def lr(self) -> float:
        return float(self.sched.get_last_lr()[0])

    def _sample(self) -> Batch:
        return self.data.sample(self.cfg.batch_size)

    def _compute_losses(self, batch: Batch) -> torch.Tensor:
        levels = self._level_losses(batch.points, batch.values)  # first: its draws come before invdyn's dropout
        pred = self.model.invdyn(batch.obs, batch.next_obs)
        err = F.mse_loss(pred.float(), batch.act, reduction="none") * batch.pair_mask
        invdyn = err.sum() / (batch.pair_mask.sum() * batch.act.shape[1]).clamp(min=1)
        return torch.cat([levels, invdyn[None]])

    def _optimize(self, losses: torch.Tensor) -> None:
        """The level models and inverse dynamics have step budgets of their own: one that has
        spent its budget keeps its weights (and its schedule) while the other trains on."""
        cfg = self.cfg
        train_levels = self.step < cfg.diffusion_gradient_steps
        train_invdyn = self.step < cfg.invdyn_gradient_steps
        total = losses[:-1].sum() * train_levels + losses[-1] * train_invdyn
        self.optim.zero_grad(set_to_none=True)
        self.invdyn_optim.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if train_levels:
            self.scaler.step(self.optim)
            self.sched.step()
        if train_invdyn:
            self.scaler.step(self.invdyn_optim)
        self.scaler.update()
        if train_levels:
            self.model.update_ema(cfg.ema_rate)

    def _extra_optimizer_state(self) -> dict[str, Any]:
        return {"sched": self.sched.state_dict(), "invdyn_optim": self.invdyn_optim.state_dict()}

    def _load_extra_optimizer_state(self, state: dict[str, Any]) -> None:
        self.sched.load_state_dict(state["sched"])
        self._load_optimizer(self.invdyn_optim, state["invdyn_optim"])

    def _origin(self) -> dict[str, Any]:
        """None: a checkpoint without a variant is R1's (`checkpoint.variant_of`), as all were
        before reflow."""
        return {}

    def _check_resumable(self, state: dict[str, Any], path: Path) -> None:
        if checkpoint.variant_of(state) != "R1":
            raise checkpoint.CheckpointError(
                f"{path} is a reflow (R2) checkpoint; continue it with "
                f"`dlite reflow --resume`, or train R1 in another folder"
            )
        checkpoint.check_compatible(state, self.cfg, self.data.fingerprint, path)
