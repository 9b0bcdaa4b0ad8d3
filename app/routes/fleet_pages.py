"""The workers page: the fleet a user runs (where each worker is, what it does, whether it is
still there), with a cap per worker and a stop for one or all; the part of the page that the
runs stream and a slow timer refresh (an idle worker changes no run, but its last poll ages)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from app.auth import require_page
from app.db import Database
from app.deps import get_db, get_settings
from app.routes.pages import _page
from app.routes.responses import TO_LOGIN
from app.services import workers
from app.services.claims import sweep_leases
from app.settings import Settings

router = APIRouter(dependencies=[Depends(require_page)], tags=["pages"], responses=TO_LOGIN)


def _fleet(request: Request, db: Database, settings: Settings, template: str) -> HTMLResponse:
    sweep_leases(db)  # a lost worker's run shows as queued again, as the claims would see it
    with db.read() as session:
        rows = workers.worker_rows(session, settings.lease_seconds)
    counts = {s: sum(r["status"] == s for r in rows) for s in workers.STATUSES}
    return _page(request, template, {"workers": rows, "counts": counts, "lease_seconds": settings.lease_seconds})


@router.get("/workers", response_class=HTMLResponse)
def workers_page(
    request: Request, db: Database = Depends(get_db), settings: Settings = Depends(get_settings)
) -> HTMLResponse:
    return _fleet(request, db, settings, "workers.html")


@router.get("/workers/table", response_class=HTMLResponse)
def workers_table(
    request: Request, db: Database = Depends(get_db), settings: Settings = Depends(get_settings)
) -> HTMLResponse:
    return _fleet(request, db, settings, "_workers_table.html")
