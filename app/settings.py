"""Server settings, read once from the environment.

Only server concerns live here (where data goes, the token, lease length); run
hyper-parameters and their defaults belong to `dlite.config` alone.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app.protocol import MAX_BODY_BYTES

TOKEN_FILE = "token"
DATABASE_FILE = "dlite.db"
STATE_STATUS_FILE = "state-backup.json"
"""The launcher's last word on saving the server state, read by the dashboard."""
MIN_TOKEN_LENGTH = 24
ROOT_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")
"""A path prefix: segments of URL-safe characters that need no escaping in HTML, JavaScript
or a cookie's Path; "." and ".." segments (which a browser folds away) are refused too."""
APP_SEGMENTS = frozenset(
    {"api", "compare", "docs", "healthz", "login", "logout", "results", "runs", "static", "sweeps", "vendor", "workers"}
)
"""First segments of the app's own paths (a test keeps this in step with the routes): behind a
proxy that strips the prefix, a prefix starting with one would make some paths ambiguous."""
YES, NO = frozenset({"1", "true", "yes", "on"}), frozenset({"", "0", "false", "no", "off"})


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
    max_body_bytes: int = MAX_BODY_BYTES
    """Largest request body (413 beyond): a batch of 50,000 metric points is about 5 MB."""
    token_file: Path | None = None
    """Where the token was read from; None when it came from DLITE_TOKEN."""
    trusted_proxies: str = ""
    """Comma-separated addresses whose X-Forwarded-For/-Proto headers are believed (uvicorn's
    forwarded_allow_ips). Empty: none, the client is the TCP peer, so nobody can pose as
    many clients, or as someone else, by sending a header."""
    root_path: str = ""
    """The path prefix a reverse proxy serves the dashboard under ("/lab"), or "" at the root:
    every link, redirect and cookie path carries it (see app.urls)."""
    secure_cookies: bool = False
    """Mark cookies Secure even when the connection looks like plain HTTP: for a TLS proxy
    not listed in trusted_proxies, whose X-Forwarded-Proto is therefore not believed."""

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def load_or_create_token(data_dir: Path) -> str:
    """The token file is created once with mode 0600 so only its owner can read it."""
    path = data_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    write_token(data_dir, token)
    return token


def write_token(data_dir: Path, token: str) -> None:
    """The token file, mode 0600 from the start so only its owner can ever read it: the
    generated token, or one a restored lab brings back (worker.state_backup)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)


def token_source(settings: Settings) -> str:
    """Where a user finds the token, for the login page and the start-up message."""
    return "the DLITE_TOKEN environment variable" if settings.token_file is None else f"the file {settings.token_file}"


def data_dir_from_env(data_dir: str | Path | None = None) -> Path:
    """`data_dir`, else DLITE_DATA_DIR, else ~/.dlite; the launcher needs it before the
    token exists (a restored token must be in place first)."""
    return Path(data_dir or os.environ.get("DLITE_DATA_DIR") or Path.home() / ".dlite").expanduser().resolve()


def database_url_from_env(data_dir: Path) -> str:
    """DATABASE_URL, else the embedded SQLite file in the data directory."""
    return os.environ.get("DATABASE_URL") or f"sqlite:///{data_dir / DATABASE_FILE}"


def check_root_path(value: str) -> str:
    """DLITE_ROOT_PATH as the app uses it; a malformed one stops the server before a page
    links somewhere the proxy does not serve."""
    value = value.strip()
    if value and (not ROOT_PATH.fullmatch(value) or {".", ".."} & set(value.split("/"))):
        raise SystemExit(
            f"DLITE_ROOT_PATH={value!r} is not a path prefix: write it as the proxy serves the "
            "dashboard, e.g. /lab or /tools/lab (a leading /, no trailing / or //, letters, digits "
            "and - . _ ~ only), or unset it when the dashboard is at the root"
        )
    if value and value.split("/")[1] in APP_SEGMENTS:
        raise SystemExit(
            f"DLITE_ROOT_PATH={value!r} starts with /{value.split('/')[1]}, one of the dashboard's "
            "own paths, so a proxy that strips the prefix would make pages and API calls ambiguous: "
            "pick another prefix, e.g. /lab"
        )
    return value


def _flag(name: str, value: str) -> bool:
    word = value.strip().lower()
    if word not in YES | NO:
        raise SystemExit(f"{name}={value!r} is neither on nor off: set it to 1 or 0 (or true/false), or unset it")
    return word in YES


def settings_from_env(data_dir: str | Path | None = None) -> Settings:
    """DLITE_DATA_DIR, DATABASE_URL, DLITE_TOKEN, DLITE_LEASE_SECONDS, DLITE_TRUSTED_PROXIES,
    DLITE_ROOT_PATH and DLITE_SECURE_COOKIES, with file-based fallbacks."""
    env = os.environ
    root = data_dir_from_env(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    url = database_url_from_env(root)
    token_file = None if env.get("DLITE_TOKEN") else root / TOKEN_FILE
    token = env.get("DLITE_TOKEN") or load_or_create_token(root)
    if len(token) < MIN_TOKEN_LENGTH:
        raise SystemExit(
            f"DLITE_TOKEN is too short ({len(token)} characters): the dashboard may be public, "
            f"use at least {MIN_TOKEN_LENGTH} random characters, or unset it to get a generated one"
        )
    lease = float(env.get("DLITE_LEASE_SECONDS") or Settings.lease_seconds)
    return Settings(
        data_dir=root,
        database_url=url,
        token=token,
        lease_seconds=lease,
        token_file=token_file,
        trusted_proxies=env.get("DLITE_TRUSTED_PROXIES", "").strip(),
        root_path=check_root_path(env.get("DLITE_ROOT_PATH", "")),
        secure_cookies=_flag("DLITE_SECURE_COOKIES", env.get("DLITE_SECURE_COOKIES", "")),
    )
