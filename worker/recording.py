"""The recorded episode of an evaluation (dlite.record): when one is wanted, and where its
files go. The files stay in the run's folder (`artifacts/`): the outbox uploads them from
there, retrying through an outage, and the backups include them."""

from __future__ import annotations

from pathlib import Path

from dlite.config import Config
from dlite.planner import Planner
from dlite.record import Recording, record_episode

FOLDER = "artifacts"
SEED_OFFSET = 20_000
"""The recorded episode's seed is the run's plus this: apart from the evaluation's (+10,000 and
up), so it is an extra episode, never one of the scored ones."""


def wanted(cfg: Config, step: int, kind: str) -> bool:
    """Every final evaluation unless record_video is off; every n-th quick one when
    video_every_quick is n (counted in quick evaluations: step / eval_every)."""
    if cfg.record_video == "off":
        return False
    if kind == "final":
        return True
    n = cfg.video_every_quick
    return bool(n and cfg.eval_every and (step // cfg.eval_every) % n == 0)


def stem(variant: str, kind: str, step: int) -> str:
    """The artifacts' shared name: 'R1-final-1000000' (.webm, .plans.json), as the server takes it."""
    return f"{variant}-{kind}-{step}"


def record(planner: Planner, cfg: Config, step: int, kind: str, run_dir: Path) -> Recording:
    """Raises dlite.record.RenderUnavailable (with the fix) when this machine cannot render."""
    return record_episode(
        planner,
        seed=cfg.seed + SEED_OFFSET,
        checkpoint_step=step,
        out_dir=run_dir / FOLDER,
        stem=stem(planner.variant, kind, step),
        max_steps=cfg.max_episode_steps,
    )


def files(run_dir: Path) -> list[Path]:
    """The recorded artifacts of the run so far, for its backups."""
    folder = run_dir / FOLDER
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else []
