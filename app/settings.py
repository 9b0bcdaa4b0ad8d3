"""Server settings, read once from the environment.

Only server concerns live here (where data goes, the token, lease length); run
hyper-parameters and their defaults belong to `dlite.config` alone.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

TOKEN_FILE = "token"
MIN_TOKEN_LENGTH = 24


@dataclass(frozen=True)
class Settings:
    """Everything the app factory needs; tests build one directly with small timings."""

    data_dir: Path
    database_url: str
    token: str = field(repr=False)
    lease_seconds: float = 60.0
    lease_sweep_seconds: float = 5.0
    sse_poll_seconds: float = 0.5
    sse_keepalive_seconds: float = 15.0
    login_failures_per_minute: int = 5
    session_days: float = 30.0

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)


def load_or_create_token(data_dir: Path) -> str:
    """The token file is created once with mode 0600 so only its owner can read it."""
    path = data_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def settings_from_env(data_dir: str | Path | None = None) -> Settings:
    """DLITE_DATA_DIR, DATABASE_URL, DLITE_TOKEN and DLITE_LEASE_SECONDS, with file-based fallbacks."""
    env = os.environ
    root = Path(data_dir or env.get("DLITE_DATA_DIR") or Path.home() / ".dlite").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    url = env.get("DATABASE_URL") or f"sqlite:///{root / 'dlite.db'}"
    token = env.get("DLITE_TOKEN") or load_or_create_token(root)
    if len(token) < MIN_TOKEN_LENGTH:
        raise SystemExit(f"DLITE_TOKEN is too short ({len(token)} characters): the dashboard may be public, "
                         f"use at least {MIN_TOKEN_LENGTH} random characters, or unset it to get a generated one")
    lease = float(env.get("DLITE_LEASE_SECONDS") or Settings.lease_seconds)
    return Settings(data_dir=root, database_url=url, token=token, lease_seconds=lease)
