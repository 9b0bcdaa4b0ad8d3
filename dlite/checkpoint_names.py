"""Checkpoint file names, apart from `dlite.checkpoint` so that code that only moves
checkpoint files (the backups, and the launcher that saves the server state beside
them) can name them without importing torch."""

from __future__ import annotations

import re
from pathlib import Path

NAME = re.compile(r"^ckpt_(\d{8,})\.pt$")


def checkpoint_name(step: int) -> str:
    """Zero-padded, so that names sort in step order."""
    return f"ckpt_{step:08d}.pt"


def step_of(path: Path) -> int | None:
    m = NAME.match(path.name)
    return int(m.group(1)) if m else None
