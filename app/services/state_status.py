"""What the launcher last said about saving the server's own state (worker/state_backup.py
writes it beside the database): a dashboard whose state silently stops being saved would
lose everything at the next disconnect while claiming the opposite."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from app.settings import STATE_STATUS_FILE


@dataclass(frozen=True)
class StateStatus:
    ok: bool
    message: str


def state_status(data_dir: Path) -> StateStatus | None:
    """None when the lab saves no state (no --backup-dir/--hub-repo) or has not tried yet."""
    try:
        raw = json.loads((data_dir / STATE_STATUS_FILE).read_text())
        return StateStatus(ok=bool(raw["ok"]), message=str(raw["message"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
