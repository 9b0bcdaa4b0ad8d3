"""R2, the paper's one-step variant: reflow the trained R1 level models (docs/method.md §7).

Pairs: per level, windows drawn as in training give the fixed points, standard-normal
noise x1 is integrated 20 Euler steps by the R1 EMA model into a plan x0, conditioned on
the window's value (or, for the unconditional share, on nothing). Reflow then fine-tunes
each level to go from the stored x1 to its x0, which straightens the flow so one Euler
step plans.

Pairs are R2's bulk data (GBs at the paper's sizes), so they live in memory-mapped files
in the run folder, never in a backup. Each batch is generated from a seed derived from
the run seed, its level and its index: an interrupted generation resumes at its next
batch, and a fresh machine regenerates exactly the same pairs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from dlite import checkpoint
from dlite.config import Config, level_loss_keys
from dlite.dataset import WindowDataset
from dlite.dit import DiT1d
from dlite.files import atomic_path
from dlite.flow import fix_mask, sample
from dlite.model import DiffuserLite
from dlite.train import TrainerBase

PAIRS_FORMAT = "dlite-reflow-pairs-v1"
MANIFEST = "manifest.json"

PairProgress = Callable[[int, int, int], None]
"""(level, pairs done in that level, pairs per level)."""


class PairsError(RuntimeError):
    """Pair files that belong to another R1 model or other settings, or are incomplete."""


def weights_digest(model: DiffuserLite) -> str:
    """sha256 of the EMA level weights: names the R1 model the pairs came from,
    whichever file or machine it was loaded from."""
    h = hashlib.sha256()
    for name, tensor in model.ema_levels.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class PairSpec:
    """Everything that decides the pairs' content; a folder holding other pairs is refused."""

    r1_weights: str
    dataset: str
    n_cond: int
    n_uncond: int
    steps: int
    batch: int
    seed: int
    horizons: tuple[int, ...]
    obs_dim: int

    @classmethod
    def of(cls, cfg: Config, model: DiffuserLite, data: WindowDataset) -> PairSpec:
        return cls(
            weights_digest(model),
            data.fingerprint,
            cfg.reflow_pairs_cond,
            cfg.reflow_pairs_uncond,
            cfg.reflow_pair_steps,
            cfg.reflow_pair_batch,
            cfg.seed,
            tuple(cfg.horizons),
            data.obs_dim,
        )

    @property
    def total(self) -> int:
        return self.n_cond + self.n_uncond

    def batches(self) -> list[tuple[bool, int, int]]:
        """(conditional, first index, size) of every batch: conditional pairs first."""
        out = []
        for conditional, first, count in ((True, 0, self.n_cond), (False, self.n_cond, self.n_uncond)):
            out += [
                (conditional, first + i * self.batch, min(self.batch, count - i * self.batch))
                for i in range(math.ceil(count / self.batch))
            ]
        return out

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "horizons": list(self.horizons)}


_SHOWN = {
    "r1_weights": "R1 weights",
    "dataset": "dataset",
    "n_cond": "reflow_pairs_cond",
    "n_uncond": "reflow_pairs_uncond",
    "steps": "reflow_pair_steps",
    "batch": "reflow_pair_batch",
}
"""How a PairSpec field is named to the user: by its setting."""


def _batch_seed(seed: int, level: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, level, index]).generate_state(1, np.uint64)[0] >> 1)


class PairStore:
    """x0 and x1 (N, horizon, obs_dim) and value (N, 1) per level, memory-mapped from
    `folder`; the manifest counts the finished batches of each level."""

    def __init__(self, folder: Path, spec: PairSpec) -> None:
        self.folder, self.spec = folder, spec
        self.done = [0] * len(spec.horizons)
        manifest = folder / MANIFEST
        if manifest.exists():
            saved = json.loads(manifest.read_text())
            if saved.get("format") != PAIRS_FORMAT or saved.get("spec") != spec.to_json():
                differ = sorted(
                    _SHOWN.get(k, k) for k, v in spec.to_json().items() if saved.get("spec", {}).get(k) != v
                )
                raise PairsError(
                    f"{folder} holds reflow pairs of another R1 model or other settings "
                    f"({', '.join(differ) or 'file format'} differ); delete the folder to regenerate"
                )
            self.done = saved["done"]

    def _path(self, level: int, name: str) -> Path:
        return self.folder / f"level{level}_{name}.npy"

    def _arrays(self, level: int, mode: str) -> dict[str, np.memmap]:
        n, h, o = self.spec.total, self.spec.horizons[level], self.spec.obs_dim
        shapes = {"x0": (n, h, o), "x1": (n, h, o), "value": (n, 1)}
        return {
            name: np.lib.format.open_memmap(self._path(level, name), mode=mode, dtype=np.float32, shape=shape)
            if mode == "w+"
            else np.load(self._path(level, name), mmap_mode=mode)  # type: ignore[arg-type]  # r or r+
            for name, shape in shapes.items()
        }

    @property
    def complete(self) -> bool:
        return all(d == len(self.spec.batches()) for d in self.done)

    @property
    def pairs_done(self) -> int:
        batches = self.spec.batches()
        return sum(sum(size for _, _, size in batches[:d]) for d in self.done)

    def _write_manifest(self) -> None:
        with atomic_path(self.folder / MANIFEST) as tmp:
            tmp.write_text(json.dumps({"format": PAIRS_FORMAT, "spec": self.spec.to_json(), "done": self.done}))

    @torch.no_grad()
    def generate(
        self,
        model: DiffuserLite,
        data: WindowDataset,
        progress: PairProgress | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Generate the missing batches; returns False if stopped before the end. Each
        batch is flushed before the manifest counts it, so a crash loses at most one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        batches = self.spec.batches()
        devices = [data.device] if data.device.type == "cuda" else []
        for level, (net, points) in enumerate(zip(model.ema_levels, self.spec.horizons)):
            if self.done[level] == len(batches):
                continue
            arrays = self._arrays(level, "r+" if self.done[level] else "w+")
            mask = fix_mask(points, data.obs_dim, level, data.device)
            net.eval()
            for index in range(self.done[level], len(batches)):
                if should_stop():
                    return False
                conditional, first, size = batches[index]
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(_batch_seed(self.spec.seed, level, index))
                    windows, values, _ = data.sample_level(level, size)
                    x1 = torch.randn_like(windows)
                    x0 = sample(
                        cast(DiT1d, net),
                        windows * mask,
                        mask,
                        values,
                        self.spec.steps,
                        1.0,
                        1.0 if conditional else 0.0,
                        noise=x1,
                    )
                for name, tensor in (("x0", x0), ("x1", x1), ("value", values)):
                    arrays[name][first : first + size] = tensor.float().cpu().numpy()
                for array in arrays.values():
                    array.flush()
                self.done[level] = index + 1
                self._write_manifest()
                if progress:
                    progress(level, first + size, self.spec.total)
            del arrays
        return True

    def tensors(self, device: torch.device) -> list[dict[str, torch.Tensor]]:
        """The pairs of every level as tensors: on the GPU when training there (they fit
        a T4 at the paper's sizes), else views of the memory-mapped files."""
        if not self.complete:
            raise PairsError(
                f"{self.folder} holds {self.pairs_done} of {self.spec.total * len(self.done)} "
                f"reflow pairs; generate the rest first"
            )
        out = []
        for level in range(len(self.spec.horizons)):
            arrays = self._arrays(level, "c")  # copy-on-write: writable views, the files stay as they are
            out.append(
                {
                    name: torch.from_numpy(np.asarray(a)).to(device) if device.type != "cpu" else torch.from_numpy(a)
                    for name, a in arrays.items()
                }
            )
        return out


def load_r1(state: dict[str, Any], cfg: Config, data: WindowDataset, path: Path) -> DiffuserLite:
    """The R1 model of a checkpoint, checked against the dataset it will reflow on."""
    if checkpoint.variant_of(state) != "R1":
        raise checkpoint.CheckpointError(f"{path} is an R2 checkpoint; reflow starts from an R1 checkpoint")
    if state["dataset"]["fingerprint"] != data.fingerprint:
        raise checkpoint.CheckpointError(f"{path} was trained on another dataset; reflow on the same file")
    model = DiffuserLite(cfg, data.obs_dim, data.act_dim).to(data.device)
    model.load_state_dict(state["model"])
    return model


@dataclass(frozen=True)
class PairBatch:
    """One reflow step's pairs, per level, and whether they are the conditional ones."""

    x0: list[torch.Tensor]
    x1: list[torch.Tensor]
    values: list[torch.Tensor]
    conditional: bool


class ReflowTrainer(TrainerBase[PairBatch]):
    """Fine-tunes the level models on stored pairs, from the R1 weights (training
    and EMA), with a fresh AdamW at a constant rate: the reference sets a 2e-5 rate on an
    attribute its optimiser never reads, so it trained at 2e-4 (reflow_lr). Every
    `reflow_uncond_every`-th step trains on unconditional pairs. Inverse dynamics is R1's,
    so there is no schedule and no inverse-dynamics optimiser to build, step or save.
    Checkpoints hold the full state and resume bit-exactly, like R1's.

    Steps continue R1's count (reflow step k of an R1 model trained n steps is step n + k),
    so checkpoints, curves and backups of one run never reuse a step."""

    variant = "R2"

    def __init__(
        self,
        cfg: Config,
        data: WindowDataset,
        pairs: PairStore,
        r1: DiffuserLite,
        r1_step: int,
        out_dir: Path | None = None,
        path: str = "eager",
    ) -> None:
        super().__init__(cfg, data, out_dir, path)
        # R1's weights go into the model the base built from the seed, not `r1` itself: the
        # caller's R1 model stays as it is, and the draws that follow are those of a seeded build
        self.model.load_state_dict(r1.state_dict())
        self.start_step = self.step = r1_step
        self.pair_spec = pairs.spec
        self.pairs = pairs.tensors(self.device)

    @property
    def level_lr(self) -> float:
        return self.cfg.reflow_lr

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """One per level: inverse dynamics is R1's and not trained here."""
        return level_loss_keys(len(self.cfg.horizons))

    @property
    def total_steps(self) -> int:
        return self.start_step + self.cfg.reflow_gradient_steps

    def lr(self) -> float:
        return self.cfg.reflow_lr

    def conditional_step(self) -> bool:
        if self.pair_spec.n_uncond == 0:
            return True
        every = self.cfg.reflow_uncond_every
        return (self.step - self.start_step) % every != every - 1

    def _sample(self) -> PairBatch:
        """Pairs of every level, drawn from the conditional or unconditional ones (`conditional_step`)."""
        conditional = self.conditional_step()
        lo, hi = (0, self.pair_spec.n_cond) if conditional else (self.pair_spec.n_cond, self.pair_spec.total)
        batch = PairBatch([], [], [], conditional)
        for level in self.pairs:
            index = torch.randint(lo, hi, (self.cfg.batch_size,))
            for parts, key in ((batch.x0, "x0"), (batch.x1, "x1"), (batch.values, "value")):
                parts.append(level[key][index.to(level[key].device)].to(self.device, non_blocking=True))
        return batch

    def _compute_losses(self, batch: PairBatch) -> torch.Tensor:
        return self._level_losses(batch.x0, batch.values, batch.x1, batch.conditional)

    def _optimize(self, losses: torch.Tensor) -> None:
        self.optim.zero_grad(set_to_none=True)
        self.scaler.scale(losses.sum()).backward()
        self.scaler.step(self.optim)
        self.scaler.update()
        self.model.update_ema(self.cfg.ema_rate)

    def _extra_optimizer_state(self) -> dict[str, Any]:
        """None: the level optimiser is all reflow trains, at a constant rate."""
        return {}

    def _load_extra_optimizer_state(self, state: dict[str, Any]) -> None:
        """Nothing: see `_extra_optimizer_state`."""

    def _origin(self) -> dict[str, Any]:
        """Planners and `dlite reflow --resume` tell R2 checkpoints by these; the pairs and
        the R1 step say which R1 model and pairs a resume must use."""
        return {"variant": "R2", "pairs": self.pair_spec.to_json(), "r1_step": self.start_step}

    def _check_resumable(self, state: dict[str, Any], path: Path) -> None:
        """Refuses R1 checkpoints, other pairs and other settings: the reflow settings R1's
        resume lets change (`REFLOW_TRAINING_FIELDS`) shape reflow's steps, so they are fixed here."""
        if checkpoint.variant_of(state) != "R2":
            raise checkpoint.CheckpointError(f"{path} is not a reflow (R2) checkpoint")
        if state["pairs"] != self.pair_spec.to_json() or state["r1_step"] != self.start_step:
            raise checkpoint.CheckpointError(
                f"{path} was reflowed on other pairs (another R1 model or pair "
                f"settings); resume with the same ones or start in a new folder"
            )
        checkpoint.check_compatible(
            state,
            self.cfg,
            self.data.fingerprint,
            path,
            safe=checkpoint.RESUME_SAFE_FIELDS - checkpoint.REFLOW_TRAINING_FIELDS,
        )
