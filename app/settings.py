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
    max_body_bytes: int = 16 * 2**20
    """Largest request body (413 beyond): a batch of 50,000 metric points is about 5 MB."""
    token_file: Path | None = None
    """Where the token was read from; None when it came from DLITE_TOKEN."""
    trusted_proxies: str = ""
    """Comma-separated addresses whose X-Forwarded-For/-Proto headers are believed (uvicorn's
    forwarded_allow_ips). Empty: none, the client is the TCP peer, so nobody can pose as
    many clients, or as someone else, by sending a header."""

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


def token_source(settings: Settings) -> str:
    """Where a user finds the token, for the login page and the start-up message."""
    return "the DLITE_TOKEN environment variable" if settings.token_file is None else f"the file {settings.token_file}"


def settings_from_env(data_dir: str | Path | None = None) -> Settings:
    """DLITE_DATA_DIR, DATABASE_URL, DLITE_TOKEN, DLITE_LEASE_SECONDS and DLITE_TRUSTED_PROXIES,
    with file-based fallbacks."""
    env = os.environ
    root = Path(data_dir or env.get("DLITE_DATA_DIR") or Path.home() / ".dlite").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    url = env.get("DATABASE_URL") or f"sqlite:///{root / 'dlite.db'}"
    token_file = None if env.get("DLITE_TOKEN") else root / TOKEN_FILE
    token = env.get("DLITE_TOKEN") or load_or_create_token(root)
    if len(token) < MIN_TOKEN_LENGTH:
        raise SystemExit(f"DLITE_TOKEN is too short ({len(token)} characters): the dashboard may be public, "
                         f"use at least {MIN_TOKEN_LENGTH} random characters, or unset it to get a generated one")
    lease = float(env.get("DLITE_LEASE_SECONDS") or Settings.lease_seconds)
    return Settings(data_dir=root, database_url=url, token=token, lease_seconds=lease, token_file=token_file,
                    trusted_proxies=env.get("DLITE_TRUSTED_PROXIES", "").strip())
