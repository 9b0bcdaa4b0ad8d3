"""Checkpoint files: one per save, written atomically, holding everything needed to
continue a run exactly (weights, EMA, optimisers, schedule, RNG, data fingerprint)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch

from dlite.checkpoint_names import checkpoint_name as checkpoint_name  # re-exported for callers of dlite.checkpoint
from dlite.checkpoint_names import step_of
from dlite.config import FIELDS, Config, from_dict
from dlite.files import atomic_path

log = logging.getLogger(__name__)

FORMAT = "dlite-checkpoint-v1"

RESUME_SAFE_GROUPS = {"planning", "evaluation", "backup", "reflow"}
RESUME_SAFE_FIELDS = {"log_interval", "save_interval", "on_nonfinite", "train_accel"} | {
    name for name, f in FIELDS.items() if f.metadata["group"] in RESUME_SAFE_GROUPS
}
"""Settings that may change on resume: none of them alters a gradient step (train_accel picks
how a step runs, verified against eager; mixed precision is held by the checkpoint's `amp`)."""
REFLOW_TRAINING_FIELDS = {
    "reflow_pairs_cond",
    "reflow_pairs_uncond",
    "reflow_pair_steps",
    "reflow_pair_batch",
    "reflow_gradient_steps",
    "reflow_lr",
    "reflow_uncond_every",
}
"""Reflow settings that shape its pairs or gradient steps: fixed once a reflow run started."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or does not belong to this run."""


def write_atomic(state: dict[str, Any], path: Path) -> Path:
    """torch.save, whole or not at all (`files.atomic_path`)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def read(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check a checkpoint; a broken file raises CheckpointError naming it."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it may be truncated or not a dlite checkpoint"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file")
    return state


def saved_config(state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's settings. Files written before the `block` setting existed were
    trained with the textbook DiT block, so they load as block 'dit'."""
    return {"block": "dit", **state["config"]}


def variant_of(state: dict[str, Any]) -> str:
    """R1 for trained weights, R2 for reflowed ones."""
    return state.get("variant", "R1")


def config_of(state: dict[str, Any]) -> Config:
    return from_dict(saved_config(state))


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files of a folder, oldest step first."""
    if not folder.is_dir():
        return []
    found = [(step_of(p), p) for p in folder.iterdir()]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def newest_readable(
    folder: Path,
    map_location: str | torch.device = "cpu",
    on_skip: Callable[[Path, CheckpointError], None] | None = None,
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, skipping (and naming) broken newer ones; `on_skip`
    lets a caller report each skipped file where its user looks (a run's events)."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, read(path, map_location)
        except CheckpointError as e:
            log.warning("skipping a broken checkpoint: %s", e)
            if on_skip:
                on_skip(path, e)
    return None


def check_compatible(
    state: dict[str, Any], cfg: Config, fingerprint: str, path: Path, safe: set[str] = RESUME_SAFE_FIELDS
) -> None:
    """Refuse to resume on other data or with settings that change training (all but `safe`)."""
    if state["dataset"]["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"{path} was trained on another dataset (fingerprint {state['dataset']['fingerprint'][:12]}…, "
            f"this dataset {fingerprint[:12]}…); resume with the same file or start in a new folder"
        )
    saved = saved_config(state)
    wanted = cfg.to_dict()
    differ = [k for k in wanted if k not in safe and saved.get(k) != wanted[k]]
    if differ:
        detail = ", ".join(f"{k} (checkpoint {saved.get(k)!r}, now {wanted[k]!r})" for k in differ)
        raise CheckpointError(
            f"{path} was trained with other settings: {detail}; resume with the same settings or start in a new folder"
        )


def prune(folder: Path, keep: int, protect: Collection[Path] = ()) -> list[Path]:
    """Delete all but the newest `keep` checkpoints, and never one in `protect` (one a backup
    is still reading); returns what was deleted."""
    paths = list_checkpoints(folder)
    doomed = [p for p in (paths[:-keep] if keep > 0 else paths) if p not in protect]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed
