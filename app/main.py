"""App factory. `create_app(settings)` migrates the database, wires routes and starts
the lease sweeper; nothing here (or anywhere in app/) imports torch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from app.auth import Auth, LoginRequired
from app.db import Database
from app.routes import api_runs, auth, docs, health, pages, stream, workers
from app.services import Conflict, NotFound
from app.services.claims import sweep_leases
from app.settings import Settings
from dlite.config import ConfigError

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


async def _sweep_forever(db: Database, every: float) -> None:
    """Requeue lost leases even when no worker claims and nobody looks at the list."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(sweep_leases, db)
        except Exception:  # a locked database now is no reason to stop sweeping later
            log.exception("lease sweep failed")


def _config_error(_: Request, exc: ConfigError) -> JSONResponse:
    """Same shape as FastAPI's own validation errors, so a form can show it by the field."""
    loc = ["body", "task"] if exc.field == "task" else ["body", "config", exc.field]
    return JSONResponse({"detail": [{"loc": loc, "msg": exc.message, "type": "value_error"}]}, 422)


def _login_required(_: Request, exc: LoginRequired) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(exc.next_path)}", status_code=303)


def create_app(settings: Settings) -> FastAPI:
    db = Database(settings.database_url)
    db.migrate()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(_sweep_forever(db, settings.lease_sweep_seconds))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            db.dispose()

    # FastAPI's public docs are off; app/routes/docs.py serves them behind the token.
    app = FastAPI(title="DiffuserLite Lab", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.db = db
    app.state.auth = Auth(settings.token, settings.login_failures_per_minute, settings.session_days)
    app.add_exception_handler(ConfigError, _config_error)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(NotFound, lambda _r, e: JSONResponse({"detail": str(e)}, 404))
    app.add_exception_handler(Conflict, lambda _r, e: JSONResponse({"detail": str(e)}, 409))
    for module in (health, auth, docs, pages, stream, workers, api_runs):  # stream before /runs/{id}
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
