"""The recorded episode of an evaluation (dlite.record): when one is wanted, and where its
files go. The files stay in the run's folder (`artifacts/`): the outbox uploads them from
there, retrying through an outage, and the backups include them; a resume from a backup
brings them back and uploads them again (`restored`), for a fresh server has none."""

from __future__ import annotations

from pathlib import Path

from app.protocol import ARTIFACT_NAME, MAX_BODY_BYTES
from dlite.config import Config
from dlite.planner import Planner
from dlite.record import Recording, record_episode

FOLDER = "artifacts"
CONTENT_TYPES = {"webm": "video/webm", "plans.json": "application/json"}
"""Each artifact's media type by its name's ending (app.protocol.ARTIFACT_NAME)."""
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


def content_type(path: Path) -> str:
    """The media type the server requires of the artifact (any other is a 422)."""
    match = ARTIFACT_NAME.fullmatch(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not an artifact name")
    return CONTENT_TYPES[match.group(4)]


def fits(path: Path) -> bool:
    """Whether the server takes the file: a larger one would be refused (413) and is kept in
    the backups only."""
    return path.stat().st_size <= MAX_BODY_BYTES


def restored(run_dir: Path, upto: int) -> list[Path]:
    """The artifacts a restore brought back that the server should get again: a fresh server
    (a new Colab VM) has none of them. Those of evaluations past the resumed checkpoint are
    left out, as their metric points are: training records them again under the same names."""
    return [
        path
        for path in files(run_dir)
        if (match := ARTIFACT_NAME.fullmatch(path.name)) and int(match.group(3)) <= upto and fits(path)
    ]
