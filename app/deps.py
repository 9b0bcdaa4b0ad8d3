"""Per-app objects that routes reach through the request (no module-level globals,
so several apps with different settings can live in one test process)."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates

from app.db import Database
from app.settings import Settings

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_settings(request: Request) -> Settings:
    return request.app.state.settings
