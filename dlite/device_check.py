"""The device check: before a run trains, each execution path it may use is run on the
user's own device, held to the plain path on the same batch and RNG state, and timed; the
run then uses the fastest path that passed.

No line of a CUDA path can be trusted before it ran on the GPU at hand: CUDA graphs,
torch.compile, mixed precision and fused optimisers can each crash there, or silently
compute something else. A path that raises or differs beyond its tolerance is refused and
the run falls back (only an explicit `train_accel`/`plan_accel` that fails stops it, before
any training). A path that kills the process or breaks the CUDA context is written down
first (`Journal`), so the next attempt on that machine does not try it again. The same
figures give the time the whole run will take, from step 0.

Training paths are held to `eager` (fp32, foreach optimisers): the per-level losses of the
first step, and (full precision) of the last of `TRAIN_CHECK_STEPS` steps on the same
batches, must agree within the path's tolerance, stay finite and fall; R2 runs check the
reflow step the same way on a few pairs. Planning paths are held to `plain`, the textbook
loop (`Planner.act_plain`): the same actions for the same RNG state, for one environment
and for each evaluation batch, on a model with random non-zero weights (a fresh model's zero
output layers would make every path agree trivially).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from dlite.config import Config
from dlite.dataset import WindowDataset
from dlite.dit import DiT1d
from dlite.files import atomic_path
from dlite.flow import fix_mask, sample
from dlite.model import DiffuserLite
from dlite.packed import available as packing_available
from dlite.planner import Planner, Variant
from dlite.reflow import PairSpec, PairStore, ReflowTrainer
from dlite.train import STEP_PATHS, Trainer, TrainerBase, amp_dtype

Status = Literal["reference", "ok", "failed", "skipped"]
TRAIN_REFERENCE = "eager"
PLAN_REFERENCE = "plain"
TRAIN_CHECK_STEPS = 30
"""Steps each training path runs: enough for the loss to fall measurably, few enough that a
T4 checks all its paths in about a minute at the seed size (compilation aside)."""
REFLOW_CHECK_STEPS = 15
WARMUP_STEPS = 5
"""The first steps of a path are timed apart: compilation, graph recording, the allocator.
The rest are timed in blocks of this many steps with one device sync each, as `fit` runs them."""
FP32_LOSS_RTOL = 1e-4
"""Relative tolerance of a full-precision path's losses: fused optimisers and compiled
kernels only reorder floating-point sums."""
AMP_LOSS_RTOL = 5e-2
"""Relative tolerance of the first step's losses under mixed precision (fp16 and bf16 keep
11 and 8 mantissa bits); later steps are not compared, as fp16's grad scaler skips the first
steps while it finds its scale."""
FP32_ACTION_ATOL = 1e-5
BF16_ACTION_ATOL = 5e-2
"""Actions lie in [-1, 1]; bf16 weights and activations move them by about 1e-2."""
JOURNAL_FILE = "device-check-journal.json"
"""In a run's folder: the check's record of the paths that crashed the process there."""
REDUCED_PRECISION = frozenset({"amp", "compile_amp", "bf16"})
"""Not the paper's precision: `auto` never picks them, an explicit setting does."""

PLAN_OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {"plain": True, "pack": False},
    "eager": {"pack": False},
    "packed": {"pack": True},
    "cuda_graph": {"cuda_graph": True, "pack": False},
    "compile": {"compile": True},
    "bf16": {"dtype": torch.bfloat16, "cuda_graph": True},
}
"""Planner settings of each planning path (plan_accel's choices but 'auto', and plain)."""

PlannerFactory = Callable[..., Planner]
"""(model, cfg, variant, **planner overrides) -> the path's planner."""
TrainerFactory = Callable[[Config, WindowDataset], Trainer]
ReflowFactory = Callable[[Config, WindowDataset, PairStore, DiffuserLite], ReflowTrainer]


def _planner_factory(name: str) -> PlannerFactory:
    return lambda model, cfg, variant, **overrides: Planner(
        model, cfg, variant=variant, **overrides, **PLAN_OPTIONS[name]
    )


PLANNERS: dict[str, PlannerFactory] = {name: _planner_factory(name) for name in PLAN_OPTIONS}
"""How the check, and a run for its chosen path, build each path's planner."""
TRAINERS: dict[str, TrainerFactory] = {
    name: partial(lambda cfg, data, path: Trainer(cfg, data, None, path), path=name) for name in STEP_PATHS
}
REFLOW_TRAINERS: dict[str, ReflowFactory] = {
    name: partial(lambda cfg, data, store, r1, path: ReflowTrainer(cfg, data, store, r1, 0, None, path), path=name)
    for name in STEP_PATHS
}
"""How the check builds each training path's trainers (a run builds its own with `path=`)."""


class DeviceCheckError(RuntimeError):
    """An explicit path cannot run here or failed its check, or a path broke the device."""


@dataclass
class PathResult:
    """One path's outcome. `ms`: a training step, or a planning decision for one environment;
    `ms_batch`: a decision for the final evaluation's batch; `ms_reflow`: a reflow step."""

    stage: str
    name: str
    status: Status
    ms: float | None = None
    ms_batch: float | None = None
    ms_reflow: float | None = None
    warmup_s: float | None = None
    max_diff: float | None = None
    tolerance: float | None = None
    detail: str | None = None

    @property
    def usable(self) -> bool:
        return self.status in ("reference", "ok")

    def refuse(self, detail: str) -> None:
        self.status, self.detail = "failed", detail


@dataclass
class CheckReport:
    """Everything the check found, in the worker protocol's shape (app.protocol.DeviceCheckRequest)."""

    device: str
    device_name: str
    memory_gb: float | None
    peak_memory_gb: float | None
    torch: str
    cuda: str | None
    cpu_capability: str | None
    requested: dict[str, str]
    chosen: dict[str, str]
    paths: list[PathResult]
    projection: dict[str, float]
    check_s: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckReport:
        """A report read back (from the server's API), keys it does not know ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {f.name for f in dataclasses.fields(PathResult)}
        return cls(
            **{
                **{k: v for k, v in d.items() if k in names},
                "paths": [PathResult(**{k: v for k, v in p.items() if k in fields}) for p in d["paths"]],
            }
        )

    def refused(self) -> list[PathResult]:
        return [p for p in self.paths if p.status == "failed"]

    def path(self, stage: str, name: str) -> PathResult:
        return next(p for p in self.paths if p.stage == stage and p.name == name)

    def summary(self) -> str:
        """One line for the checklist: what is used, how fast, and what was refused."""
        train, plan = self.path("train", self.chosen["train"]), self.path("plan", self.chosen["plan"])
        refused = ", ".join(f"{p.stage} {p.name}" for p in self.refused())
        return "; ".join(
            [
                f"training: {train.name} {_ms(train.ms)} ms/step",
                f"planning: {plan.name} {_ms(plan.ms)} ms/decision (1 env)",
            ]
            + ([f"refused: {refused}"] if refused else [])
            + [
                f"run projected at {_duration(self.projection['total_s'])}",
                f"checked in {self.check_s:.0f} s on {self.device_name}",
            ]
        )

    def table(self) -> str:
        """The check as a plain-text table, for a terminal or a notebook cell."""
        memory = f", {self.memory_gb:.1f} GB" if self.memory_gb else ""
        head = [
            f"device check on {self.device_name}{memory} · torch {self.torch}"
            + (f" · CUDA {self.cuda}" if self.cuda else "")
            + (f" · CPU {self.cpu_capability}" if self.cpu_capability else ""),
            f"{'stage':<6} {'path':<12} {'status':<10} {'ms':>9} {'ms batch':>9} {'ms reflow':>9} "
            f"{'warm-up s':>9} {'max diff':>9} {'tol':>7}  detail",
        ]
        rows = []
        for p in self.paths:
            detail = "; ".join(filter(None, ["used" if self.chosen.get(p.stage) == p.name else "", p.detail or ""]))
            rows.append(
                f"{p.stage:<6} {p.name:<12} {p.status:<10} {_ms(p.ms):>9} {_ms(p.ms_batch):>9} "
                f"{_ms(p.ms_reflow):>9} {_num(p.warmup_s, '.1f'):>9} {_num(p.max_diff, '.1e'):>9} "
                f"{_num(p.tolerance, '.0e'):>7}  {detail}".rstrip()
            )
        pr = self.projection
        tail = [
            f"chosen: training {self.chosen['train']} (asked {self.requested['train']}), "
            f"planning {self.chosen['plan']} (asked {self.requested['plan']})",
            f"projected for the whole run: training {_duration(pr['train_s'])} ({pr['train_steps']:,} steps), "
            f"reflow pairs {_duration(pr['reflow_pairs_s'])}, reflow {_duration(pr['reflow_s'])}, "
            f"evaluations' planning {_duration(pr['eval_s'])}; total {_duration(pr['total_s'])}",
            f"check took {self.check_s:.1f} s",
        ]
        return "\n".join(head + rows + tail)


def _ms(value: float | None) -> str:
    return "–" if value is None else (f"{value:.3f}" if value < 10 else f"{value:.1f}")


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _duration(seconds: float) -> str:
    return (
        f"{seconds / 3600:.1f} h"
        if seconds >= 3600
        else (f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s")
    )


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:500]


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued kernels, so a time covers the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, inner: int, device: torch.device) -> float:
    """Median seconds per call of fn over `repeats` runs of `inner` calls, after one untimed
    call; the GPU is waited for, so queued kernels count."""
    fn()
    sync(device)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        runs.append((time.perf_counter() - t0) / inner)
    return statistics.median(runs)


def has_compiler() -> bool:
    """torch.compile's CPU backend writes C++: without a compiler it cannot run."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


class Journal:
    """The paths a check is running, on disk: one that kills the process (a segfault) or
    breaks the CUDA context never reaches `done`, and the next check in the same folder (the
    run's next attempt on this machine) refuses it without trying it again."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        saved = json.loads(path.read_text()) if path and path.exists() else {}
        self.crashed: dict[str, str] = saved.get("crashed", {})
        for key in saved.get("running", []):
            self.crashed.setdefault(
                key,
                "the process died while checking this path (a crash, or the machine "
                "went away); not tried again on this machine",
            )
        self.running: list[str] = []
        self._write()

    def start(self, key: str) -> None:
        self.running.append(key)
        self._write()

    def done(self, key: str) -> None:
        self.running.remove(key)
        self._write()

    def broke(self, key: str, why: str) -> None:
        self.running.remove(key)
        self.crashed[key] = why
        self._write()

    def _write(self) -> None:
        if self.path:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps({"crashed": self.crashed, "running": self.running}))


def _tried(journal: Journal, result: PathResult, device: torch.device, fn: Callable[[], None]) -> None:
    """Run one path's check: an exception refuses the path; one that leaves the CUDA context
    unusable also ends the check, since nothing after it could run on this device."""
    key = f"{result.stage}.{result.name}"
    if key in journal.crashed:
        result.refuse(journal.crashed[key])
        return
    journal.start(key)
    try:
        fn()
    except Exception as e:
        result.refuse(_first_line(e))
        try:
            sync(device)
        except Exception as broken:
            why = f"it broke the CUDA context ({_first_line(broken)}); not tried again on this machine"
            journal.broke(key, why)
            raise DeviceCheckError(
                f"device check: the {result.stage} path {result.name} failed ({result.detail}) "
                f"and {why}. Restart the worker (on Colab: run cell 1 again) and retry the run: "
                f"it goes on without that path"
            ) from e
    journal.done(key)
    _free(device)


def _free(device: torch.device) -> None:
    """Compiled wrappers hold reference cycles: collect them before the next path allocates."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- which paths ------------------------------------------------------------
def _unavailable_train(name: str, device: torch.device) -> str | None:
    how = STEP_PATHS[name]
    if how.amp and amp_dtype(device) is None:
        return "mixed precision runs on CUDA only"
    if how.compile and device.type == "cpu" and not has_compiler():
        return "torch.compile on a CPU needs a C++ compiler (install g++)"
    return None


def _unavailable_plan(name: str, device: torch.device) -> str | None:
    if name == "packed" and not packing_available(device):
        return "packed weights are oneDNN's, on a CPU" if device.type != "cpu" else "this PyTorch has no oneDNN"
    if name == "cuda_graph" and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if name == "compile" and device.type == "cpu" and not has_compiler():
        return "torch.compile on a CPU needs a C++ compiler (install g++)"
    return None


def _auto_train(device: torch.device) -> list[str]:
    """Compiling a training step on a CPU takes minutes on a few cores for little gain over
    PyTorch's eager kernels, so `auto` tries it on CUDA only (where it ends launch-bound steps)."""
    return ["fused", "batched", "compile"] if device.type == "cuda" else ["fused", "batched"]


def _auto_plan(device: torch.device) -> list[str]:
    """On a CPU the packed path already runs the oneDNN kernels compile would emit."""
    return ["eager", "cuda_graph", "compile"] if device.type == "cuda" else ["eager", "packed"]


def train_paths(requested: str, every: bool, device: torch.device) -> tuple[list[str], dict[str, str]]:
    """The training paths to measure besides eager, and why each other one is not."""
    return _selection(
        requested,
        every,
        [n for n in STEP_PATHS if n != TRAIN_REFERENCE],
        _auto_train(device),
        "train_accel",
        device,
        lambda n: _unavailable_train(n, device),
    )


def plan_paths(requested: str, every: bool, device: torch.device) -> tuple[list[str], dict[str, str]]:
    """The planning paths to measure besides the textbook loop, and why each other one is not."""
    return _selection(
        requested,
        every,
        [n for n in PLAN_OPTIONS if n != PLAN_REFERENCE],
        _auto_plan(device),
        "plan_accel",
        device,
        lambda n: _unavailable_plan(n, device),
    )


def _selection(
    requested: str,
    every: bool,
    names: list[str],
    auto: list[str],
    setting: str,
    device: torch.device,
    unavailable: Callable[[str], str | None],
) -> tuple[list[str], dict[str, str]]:
    """(paths to measure, reason for each one left out). An explicit setting that cannot run
    here is an error now: training has not started."""
    if requested != "auto" and (why := unavailable(requested)):
        raise DeviceCheckError(
            f"{setting}={requested} cannot run on this device: {why}; "
            f"set {setting}=auto to use the fastest path that works here"
        )
    wanted = names if every else (auto if requested == "auto" else [requested])
    measured, skipped = [], {}
    for name in names:
        why = unavailable(name)
        if why:
            skipped[name] = why
        elif name in wanted:
            measured.append(name)
        elif name in REDUCED_PRECISION:
            skipped[name] = f"not the paper's precision: measured when {setting}={name} asks for it"
        else:
            skipped[name] = (
                f"not tried by {setting}={requested} on {'a GPU' if device.type == 'cuda' else 'a CPU'}"
                f" (set {setting}={name}, or run `dlite check --all`)"
            )
    return measured, skipped


# -- training ----------------------------------------------------------------
@dataclass
class _TrainRun:
    losses: np.ndarray  # (steps, keys)
    step_ms: float
    warmup_s: float


def _train(trainer: TrainerBase[Any], steps: int) -> _TrainRun:
    """`steps` steps of a trainer built from the seeded start every path shares (a trainer
    seeds itself, so all paths see the same weights, batches and noise), each step's losses
    kept on the device and read back at the end."""
    device = trainer.device
    losses, blocks = [], []
    t0, warmup_s, last = time.perf_counter(), 0.0, 0
    for done in range(1, steps + 1):
        trainer.train_step()
        losses.append(trainer.loss_sum.clone())
        trainer.loss_sum.zero_()
        if done % WARMUP_STEPS == 0 or done == steps:
            sync(device)
            now = time.perf_counter()
            if done <= WARMUP_STEPS:
                warmup_s = now - t0
            else:
                blocks.append(1000 * (now - t0) / (done - last))
            t0, last = now, done
    trainer.loss_count = 0
    # with too few steps for a timed block, the warm-up's mean stands in (an upper bound)
    step_ms = statistics.median(blocks) if blocks else 1000 * warmup_s / min(steps, WARMUP_STEPS)
    return _TrainRun(torch.stack(losses).double().cpu().numpy(), step_ms, warmup_s)


def _falls(losses: np.ndarray) -> bool:
    """The summed loss of the last fifth of the steps is below that of the first fifth."""
    k = max(len(losses) // 5, 1)
    total = losses.sum(axis=1)
    return bool(total[-k:].mean() < total[:k].mean())


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-8)))


def _loss_diff(run: np.ndarray, ref: np.ndarray, amp: bool) -> float:
    """The first step's losses (the forward pass), and for full precision also the last's
    (the optimiser steps in between)."""
    return _rel_diff(run[0], ref[0]) if amp else max(_rel_diff(run[0], ref[0]), _rel_diff(run[-1], ref[-1]))


def _verify_losses(result: PathResult, run: np.ndarray, ref: np.ndarray, amp: bool) -> None:
    if not np.isfinite(run).all():
        result.refuse("a loss became NaN or infinite")
        return
    result.max_diff = _loss_diff(run, ref, amp)
    if result.tolerance is not None and result.max_diff > result.tolerance:
        result.refuse(f"losses differ from eager by {result.max_diff:.1e} (relative), more than {result.tolerance:.0e}")


NO_REFERENCE = "the reference's own results were not finite, so nothing could be verified against it"


class _ReflowPairs:
    """A few reflow pairs from a random model, so R2's reflow step is checked before the run
    needs it (its losses are another compiled function than R1's)."""

    def __init__(self, cfg: Config, data: WindowDataset, model: DiffuserLite, folder: Path) -> None:
        b = cfg.batch_size
        self.cfg = cfg.replace(
            reflow_pairs_cond=2 * b,
            reflow_pairs_uncond=b if cfg.reflow_pairs_uncond else 0,
            reflow_pair_batch=b,
            reflow_pair_steps=2,
        )
        self.store = PairStore(folder, PairSpec.of(self.cfg, model, data))
        self.store.generate(model, data)
        self.model = model

    def run(self, name: str, data: WindowDataset) -> _TrainRun:
        return _train(REFLOW_TRAINERS[name](self.cfg, data, self.store, self.model), REFLOW_CHECK_STEPS)


def check_training(
    cfg: Config, data: WindowDataset, names: list[str], steps: int = TRAIN_CHECK_STEPS, journal: Journal | None = None
) -> list[PathResult]:
    """The reference and each path in `names`, verified and timed (reflow too for R2)."""
    journal = journal or Journal(None)
    device = data.device
    ref = _train(TRAINERS[TRAIN_REFERENCE](cfg, data), steps)
    ref_losses = ref.losses
    falls = _falls(ref_losses)
    results = [
        PathResult(
            "train",
            TRAIN_REFERENCE,
            "reference",
            ref.step_ms,
            warmup_s=ref.warmup_s,
            detail="fp32, foreach optimisers"
            + ("" if falls else f"; its loss did not fall over {steps} steps, so no path is held to falling"),
        )
    ]
    with tempfile.TemporaryDirectory() as tmp:
        pairs = _ReflowPairs(cfg, data, check_model(cfg, data), Path(tmp)) if cfg.variant == "R2" else None
        ref_reflow = None
        if pairs:
            reflow = pairs.run(TRAIN_REFERENCE, data)
            ref_reflow = reflow.losses
            results[0].ms_reflow = reflow.step_ms
        finite = np.isfinite(ref_losses).all() and (ref_reflow is None or np.isfinite(ref_reflow).all())
        if not finite:  # the run itself will say more (on_nonfinite); no speed-up can be trusted
            results[0].detail = f"fp32, foreach optimisers; its losses were not finite in {steps} steps"
        for name in names:
            amp = STEP_PATHS[name].amp
            result = PathResult("train", name, "ok", tolerance=AMP_LOSS_RTOL if amp else FP32_LOSS_RTOL)
            if not finite:
                result.refuse(NO_REFERENCE)
                results.append(result)
                continue

            def check(name: str = name, result: PathResult = result, amp: bool = amp) -> None:
                run = _train(TRAINERS[name](cfg, data), steps)
                result.ms, result.warmup_s = run.step_ms, run.warmup_s
                _verify_losses(result, run.losses, ref_losses, amp)
                if result.usable and falls and not _falls(run.losses):
                    result.refuse(f"its loss did not fall over {steps} steps (eager's did)")
                if result.usable and pairs and ref_reflow is not None:
                    reflow = pairs.run(name, data)
                    result.ms_reflow = reflow.step_ms
                    _verify_losses(result, reflow.losses, ref_reflow, amp)
                    if not result.usable:
                        result.detail = f"reflow step: {result.detail}"

            _tried(journal, result, device, check)
            results.append(result)
    return results


# -- planning ----------------------------------------------------------------
def check_model(cfg: Config, data: WindowDataset, seed: int = 0) -> DiffuserLite:
    """A model of the run's architecture with random non-zero weights (planning time does
    not depend on them) and the data's normaliser."""
    gen = torch.Generator().manual_seed(seed)
    model = DiffuserLite(cfg, data.obs_dim, data.act_dim)
    model.obs_mean.copy_(torch.from_numpy(data.normalizer.mean))
    model.obs_std.copy_(torch.from_numpy(data.normalizer.std))
    with torch.no_grad():
        for p in [*model.ema_levels.parameters(), *model.invdyn.parameters()]:
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.to(data.device)


def check_observations(model: DiffuserLite, n: int, seed: int = 0) -> np.ndarray:
    """Raw observations around the data's mean, at its spread: what the planner normalises."""
    rng = np.random.default_rng(seed)
    mean, std = model.obs_mean.cpu().numpy(), model.obs_std.cpu().numpy()
    return (mean + std * rng.standard_normal((n, model.obs_dim))).astype(np.float32)


def _actions(act: Callable[[np.ndarray], np.ndarray], obs: np.ndarray, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    return act(obs)


def _repeats(seconds: float, budget: float = 0.5) -> int:
    """Timed calls for a stable median within about `budget` seconds a batch size."""
    return int(min(max(budget / max(seconds, 1e-6), 5), 50))


def _time_planner(act: Callable[[np.ndarray], np.ndarray], obs: np.ndarray, device: torch.device) -> float:
    t0 = time.perf_counter()
    act(obs)
    sync(device)
    once = time.perf_counter() - t0
    return 1000 * timed(lambda: act(obs), _repeats(once), 1, device)


Rates = dict[tuple[str, int], float]
"""ms per decision by (variant, batch size)."""


def _max_abs_diff(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The largest difference over all pairs; NaN (or inf) anywhere makes it NaN."""
    return float(np.max([np.abs(a - b).max() for a, b in pairs]))


def check_planning(
    model: DiffuserLite,
    cfg: Config,
    names: list[str],
    batches: tuple[int, ...],
    variants: tuple[Variant, ...] = ("R1",),
    overrides: dict[str, Any] | None = None,
    journal: Journal | None = None,
) -> tuple[list[PathResult], dict[str, Rates]]:
    """The textbook loop and each path in `names`: the same actions for one environment and
    for each of `batches` (the evaluations' batch sizes; the last is the final evaluation's),
    for every variant the run plans with. Returns the results (`ms` and `ms_batch` are the
    first variant's) and each usable path's ms by (variant, batch size)."""
    journal = journal or Journal(None)
    overrides = overrides or {}
    device = next(model.parameters()).device
    sizes = sorted({1, *batches})
    obs = {n: check_observations(model, n, n) for n in sizes}
    refs = {v: PLANNERS[PLAN_REFERENCE](model, cfg, v, **overrides) for v in variants}
    ref_actions = {(v, n): _actions(p.act, o, 7) for v, p in refs.items() for n, o in obs.items()}
    finite = bool(np.isfinite(_max_abs_diff([(a, 0 * a) for a in ref_actions.values()])))
    rates: dict[str, Rates] = {
        PLAN_REFERENCE: {(v, n): _time_planner(p.act, o, device) for v, p in refs.items() for n, o in obs.items()}
    }
    first, final = variants[0], batches[-1]
    results = [
        PathResult(
            "plan",
            PLAN_REFERENCE,
            "reference",
            rates[PLAN_REFERENCE][first, 1],
            rates[PLAN_REFERENCE][first, final],
            detail="the textbook loop (flow.sample per level)",
        )
    ]
    if not finite:
        results[0].detail = f"{results[0].detail}; its actions were not finite"
    elif max(float(np.abs(a).max()) for a in ref_actions.values()) < 1e-3:
        results[0].detail = f"{results[0].detail}; its actions are all near zero, so agreement means little"
    for name in names:
        tol = BF16_ACTION_ATOL if name in REDUCED_PRECISION else FP32_ACTION_ATOL
        result = PathResult("plan", name, "ok", tolerance=tol)
        if not finite:
            result.refuse(NO_REFERENCE)
            results.append(result)
            continue

        def check(name: str = name, result: PathResult = result, tol: float = tol) -> None:
            t0 = time.perf_counter()
            planners = {v: PLANNERS[name](model, cfg, v, **overrides) for v in variants}
            for p in planners.values():  # compile and graph capture happen at the first call per batch size
                for o in obs.values():
                    p.act(o)
            sync(device)
            result.warmup_s = time.perf_counter() - t0
            diff = _max_abs_diff(
                [(_actions(planners[v].act, o, 7), ref_actions[v, n]) for v in variants for n, o in obs.items()]
            )
            if not np.isfinite(diff):
                result.refuse("its actions are NaN or infinite")
                return
            result.max_diff = diff
            if diff > tol:
                result.refuse(f"actions differ from the textbook loop's by {diff:.1e}, more than {tol:.0e}")
                return
            rates[name] = {(v, n): _time_planner(p.act, o, device) for v, p in planners.items() for n, o in obs.items()}
            result.ms, result.ms_batch = rates[name][first, 1], rates[name][first, final]

        _tried(journal, result, device, check)
        results.append(result)
    return results, rates


# -- choosing and projecting -------------------------------------------------
def choose(results: list[PathResult], requested: str, setting: str, reference: str, prefer: str | None = None) -> str:
    """The fastest verified full-precision path for `auto` (planning by its batch time: that is
    what evaluations spend), else the one asked for, which must have passed. `prefer` (the path
    of the checkpoint a run resumes) wins for `auto` when it passed: the run then goes on
    bit-exactly as it would have without the interruption."""
    if requested == "auto" and prefer and any(r.name == prefer and r.usable for r in results):
        return prefer
    if requested != "auto":
        mine = next(r for r in results if r.name == requested)
        if not mine.usable:
            raise DeviceCheckError(
                f"{setting}={requested} failed the device check: {mine.detail}; "
                f"set {setting}=auto to use the fastest path that passed"
            )
        return requested
    usable = [r for r in results if r.usable and r.name not in REDUCED_PRECISION and r.ms is not None]
    if reference == PLAN_REFERENCE and len(usable) > 1:  # the textbook loop only when nothing else passed
        usable = [r for r in usable if r.name != PLAN_REFERENCE]
    return min(usable, key=lambda r: (r.ms_batch if r.ms_batch is not None else r.ms, r.ms)).name


def _pairs_s(model: DiffuserLite, cfg: Config, data: WindowDataset) -> float:
    """R2's pair generation, network time only: one Euler step per level timed at a batch
    of up to 256 rows, scaled by the pairs' batches and steps."""
    device = data.device
    rows = min(cfg.reflow_pair_batch, 256)
    total = 0.0
    pairs = cfg.reflow_pairs_cond + cfg.reflow_pairs_uncond
    for level, (net, points) in enumerate(zip(cast("list[DiT1d]", model.ema_levels), cfg.horizons)):
        mask = fix_mask(points, data.obs_dim, level, device)
        prior = torch.zeros(rows, points, data.obs_dim, device=device)
        value = torch.zeros(rows, 1, device=device)
        seconds = timed(partial(sample, net, prior, mask, value, 1, 1.0, 1.0), 3, 1, device)
        total += seconds * cfg.reflow_pair_steps * pairs / rows
    return total


def project(cfg: Config, train: PathResult, plan: PathResult, rates: Rates, pairs_s: float) -> dict[str, float]:
    """The whole run at the chosen paths' measured rates: training; for R2 the pairs and
    reflow; and the evaluations' planning (each quick and final evaluation at its own batch
    size and variant, plus the planner's warm-up once: later planners of the same shapes reuse
    what torch.compile built; the simulator's time excluded)."""
    r2 = cfg.variant == "R2"
    steps, every, reflow = cfg.total_steps, cfg.eval_every, cfg.reflow_gradient_steps if cfg.variant == "R2" else 0
    quick = {
        "R1": (steps - 1) // every if every else 0,  # quick ones during R1, then during reflow
        "R2": (steps + reflow - 1) // every - steps // every if every and r2 else 0,
    }
    quick_s, final_s = 0.0, plan.warmup_s or 0.0
    per_episode = cfg.max_episode_steps / 1000
    for variant in ("R1", "R2") if r2 else ("R1",):
        quick_s += quick[variant] * rates[variant, cfg.eval_envs] * per_episode * cfg.eval_episodes
        final_s += rates[variant, cfg.num_envs] * per_episode * cfg.num_episodes
    eval_s = quick_s + final_s
    train_s = steps * (train.ms or 0.0) / 1000
    reflow_s = reflow * (train.ms_reflow or train.ms or 0.0) / 1000
    pairs = pairs_s if r2 else 0.0
    return {
        "train_steps": steps,
        "train_s": train_s,
        "reflow_pairs_s": pairs,
        "reflow_s": reflow_s,
        "eval_s": eval_s,
        "quick_eval_s": quick_s,
        "final_eval_s": final_s,
        "total_s": train_s + pairs + reflow_s + eval_s,
    }


# -- the whole check ---------------------------------------------------------
def _device_facts(device: torch.device) -> dict[str, Any]:
    from dlite.evaluate import device_name

    if device.type == "cuda":
        memory: float | None = torch.cuda.get_device_properties(device).total_memory / 1e9
    else:
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        except (AttributeError, ValueError, OSError):  # not a POSIX system
            memory = None
    return {
        "device": device.type,
        "device_name": device_name(device),
        "memory_gb": None if memory is None else round(memory, 2),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _check_train_stage(
    cfg: Config, data: WindowDataset, every: bool, journal: Journal, progress: Callable[[str], None], prefer: str | None
) -> tuple[list[PathResult], str]:
    names, skipped = train_paths(cfg.train_accel, every, data.device)
    if cfg.train_accel == "auto" and prefer in skipped and _unavailable_train(prefer, data.device) is None:
        # the resumed checkpoint's path, though auto would not try it here: keeping it keeps the run bit-exact
        names.append(prefer)
        del skipped[prefer]
    progress(f"training paths: {', '.join([TRAIN_REFERENCE, *names])}")
    found = check_training(cfg, data, names, journal=journal)
    chosen = choose(found, cfg.train_accel, "train_accel", TRAIN_REFERENCE, prefer)
    return found + [PathResult("train", n, "skipped", detail=why) for n, why in skipped.items()], chosen


def _check_plan_stage(
    cfg: Config,
    model: DiffuserLite,
    names: list[str],
    skipped: dict[str, str],
    journal: Journal,
    progress: Callable[[str], None],
) -> tuple[list[PathResult], str, Rates]:
    progress(f"planning paths: {', '.join([PLAN_REFERENCE, *names])}")
    variants: tuple[Variant, ...] = ("R1", "R2") if cfg.variant == "R2" else ("R1",)
    found, rates = check_planning(model, cfg, names, (cfg.eval_envs, cfg.num_envs), variants, journal=journal)
    chosen = choose(found, cfg.plan_accel, "plan_accel", PLAN_REFERENCE)
    return found + [PathResult("plan", n, "skipped", detail=why) for n, why in skipped.items()], chosen, rates[chosen]


def run_check(
    cfg: Config,
    data: WindowDataset,
    every: bool = False,
    journal_file: Path | None = None,
    resumes: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> CheckReport:
    """Verify, time and choose the training and planning paths of a run with `cfg` on the
    data's device; `every` measures all paths the device has (`dlite check --all`), not only
    those the run's settings may use; `journal_file` remembers paths that crashed the process;
    `resumes` is the training path of the checkpoint the run goes on from, kept when it passes.
    Raises DeviceCheckError when an explicit setting cannot run or fails."""
    device = data.device
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    plan_names, plan_skipped = plan_paths(cfg.plan_accel, every, device)  # an impossible choice fails first
    journal = Journal(journal_file)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        train, train_choice = _check_train_stage(cfg, data, every, journal, progress, resumes)
        model = check_model(cfg, data)
        plan, plan_choice, rates = _check_plan_stage(cfg, model, plan_names, plan_skipped, journal, progress)
        pairs_s = _pairs_s(model, cfg, data) if cfg.variant == "R2" else 0.0
    paths = train + plan
    chosen = {"train": train_choice, "plan": plan_choice}
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    projection = project(
        cfg,
        next(p for p in train if p.name == train_choice),
        next(p for p in plan if p.name == plan_choice),
        rates,
        pairs_s,
    )
    return CheckReport(
        **_device_facts(device),
        peak_memory_gb=None if peak is None else round(peak, 3),
        requested={"train": cfg.train_accel, "plan": cfg.plan_accel},
        chosen=chosen,
        paths=paths,
        projection=projection,
        check_s=time.perf_counter() - t0,
    )


def planner_for(choice: str, model: DiffuserLite, cfg: Config, variant: Variant) -> Planner:
    """The chosen planning path's planner for a model (a run's quick and final evaluations)."""
    return PLANNERS[choice](model, cfg, variant)
