"""From a dataset name and settings to a ready trainer: the steps the CLI and the
worker share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dlite import checkpoint, d4rl
from dlite.config import Config, ConfigError
from dlite.dataset import WindowDataset
from dlite.tasks import TASKS, domain_of
from dlite.train import Trainer


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def task_for(dataset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Fill `task` from the dataset when it names one (a task or its D4RL file name)."""
    if "task" in overrides:
        return overrides
    by_file = {t.file_name: name for name, t in TASKS.items()}
    name = dataset if dataset in TASKS else by_file.get(Path(dataset).name)
    return {**overrides, "task": name} if name else overrides


def load_dataset(
    dataset: str, cfg: Config, device: str | torch.device, progress: d4rl.ProgressFn | None = None
) -> WindowDataset:
    """Fetch if needed, read, check against the task's MuJoCo body, and move to device."""
    raw = d4rl.load(d4rl.resolve(dataset, progress))
    domain = domain_of(cfg.task)
    if raw.observations.shape[1] != domain.obs_dim or raw.actions.shape[1] != domain.act_dim:
        raise ConfigError(
            "task",
            f"{raw.path} has observation/action sizes {raw.observations.shape[1]}/"
            f"{raw.actions.shape[1]} but {cfg.task} ({domain.gym_id}) needs "
            f"{domain.obs_dim}/{domain.act_dim}; set task=... to the dataset's task",
        )
    return WindowDataset(raw, cfg, device)


class ExistingRunError(RuntimeError):
    """The output folder already holds checkpoints and resuming was not asked for."""


Found = tuple[Path, dict[str, Any]]
"""A checkpoint's path and its loaded state, as `checkpoint.newest_readable` returns them."""


def refuse_existing(out_dir: Path, resume: bool, what: str = "checkpoints") -> None:
    """Starting afresh over a folder that holds a run would mix two runs' checkpoints."""
    if not resume and checkpoint.list_checkpoints(out_dir):
        raise ExistingRunError(
            f"{out_dir} already holds {what}; pass --resume to continue that run or choose another --out folder"
        )


def build_trainer(
    data: WindowDataset, cfg: Config, out_dir: Path, resume: bool, found: Found | None, path: str = "eager"
) -> Trainer:
    """A trainer for out_dir on training path `path`; with `resume`, continued from `found` (the
    newest readable checkpoint, already loaded by the caller to read its settings), if there is one."""
    trainer = Trainer(cfg, data, out_dir, path)
    refuse_existing(out_dir, resume)
    if resume and found:
        trainer.load_state(found[1], found[0])
    return trainer
