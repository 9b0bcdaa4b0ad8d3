"""Per-app objects that routes reach through the request (no module-level globals,
so several apps with different settings can live in one test process)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from jinja2.runtime import Context

from app.db import Database
from app.protocol import plural
from app.services import waiting
from app.services.state_status import state_status
from app.settings import Settings
from app.urls import root


def _root(request: Request) -> dict[str, str]:
    """`{{ root }}`, the path prefix every URL in a template starts with (see app.urls)."""
    return {"root": root(request)}


def _state_problem(request: Request) -> dict[str, str | None]:
    """`{{ state_problem }}`: why the server state is not being saved, shown on every page."""
    status = state_status(request.app.state.settings.data_dir)
    return {"state_problem": status.message if status and not status.ok else None}


TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates", context_processors=[_root, _state_problem])


def _when(ts: float | None) -> str:
    """Unix seconds as UTC text; pages show times without relying on JavaScript."""
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return "under 1 s"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h {m:02d}m" if hours else f"{m}m {s:02d}s"


def _score(value: float | None, signed: bool = False) -> str:
    return "–" if value is None else (f"{value:+.1f}" if signed else f"{value:.1f}")


def _form_value(value: Any, kind: str) -> str:
    """A config value as the new-run form's text field shows it (lists comma-separated)."""
    if value is None:
        return ""
    return ",".join(str(v) for v in value) if kind == "int_list" else str(value)


@pass_context
def _worker_lost(context: Context, run: dict[str, Any]) -> dict[str, float] | None:
    """`worker_lost(run)`: waiting.worker_lost for a run summary at this app's lease, for
    pages whose rows come without the settings (the run list)."""
    lease_seconds = context["request"].app.state.settings.lease_seconds
    return waiting.worker_lost(run["status"], run["lease_expires_at"], lease_seconds)


TEMPLATES.env.filters.update(when=_when, duration=_duration, score=_score, form_value=_form_value, counted=plural)
TEMPLATES.env.globals.update(worker_lost=_worker_lost)


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_settings(request: Request) -> Settings:
    return request.app.state.settings
