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
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from app import errors
from app.auth import Auth, LoginRequired
from app.db import Database
from app.routes import (
    api_artifacts,
    api_compare,
    api_results,
    api_runs,
    api_sweeps,
    api_workers,
    auth,
    compare_pages,
    docs,
    fleet_pages,
    health,
    pages,
    results_pages,
    stream,
    sweep_pages,
    workers,
)
from app.services.claims import grant_restart_grace, sweep_leases
from app.settings import Settings
from app.urls import RootPath, url

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


def _login_required(request: Request, exc: LoginRequired) -> RedirectResponse:
    return RedirectResponse(url(request, f"/login?next={quote(exc.next_path)}"), status_code=303)


def create_app(settings: Settings) -> FastAPI:
    db = Database(settings.database_url)
    db.migrate()
    grant_restart_grace(db, settings.lease_seconds)

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

    # FastAPI's public docs are off; app/routes/docs.py serves them behind the token. Under a
    # prefix the OpenAPI document names it as its server, so Swagger UI's requests carry it.
    app = FastAPI(
        title="DiffuserLite Lab",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        max_body_size=settings.max_body_bytes,
        servers=[{"url": settings.root_path}] if settings.root_path else None,
    )
    app.router.redirect_slashes = False  # Starlette's are absolute URLs built from Host and scheme
    app.state.settings = settings
    app.state.db = db
    app.state.auth = Auth(
        db, settings.token, settings.login_failures_per_minute, settings.session_days, settings.secure_cookies
    )
    app.state.auth.drop_stale_sessions()
    errors.install(app)
    app.add_exception_handler(LoginRequired, _login_required)  # type: ignore[arg-type]  # Starlette's stub: handlers take Exception
    for module in (
        health,
        auth,
        docs,
        pages,
        sweep_pages,
        results_pages,
        compare_pages,
        fleet_pages,
        stream,
        workers,
        api_workers,
        api_runs,
        api_artifacts,
        api_sweeps,
        api_results,
        api_compare,
    ):
        # stream before /runs/{id}
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount(docs.SWAGGER_UI_PATH, StaticFiles(directory=docs.SWAGGER_UI), name="swagger-ui")
    if settings.root_path:
        app.add_middleware(RootPath, prefix=settings.root_path)
    return app
