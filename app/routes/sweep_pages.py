"""The sweeps pages: the sweeps with the form that queues one, a sweep followed with its
results over seeds, and the part of that page the runs stream refreshes. Like the other
pages, all markup comes from templates; lab.js only posts the form."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from app.auth import require_page
from app.db import Database
from app.deps import get_db
from app.errors import not_found_page
from app.routes.pages import _page
from app.routes.responses import PAGE_NOT_FOUND, TO_LOGIN
from app.services import NotFound, results, sweeps
from app.services.claims import sweep_leases
from dlite.config import schema
from dlite.tasks import TASKS

router = APIRouter(dependencies=[Depends(require_page)], tags=["pages"], responses=TO_LOGIN)


@router.get("/sweeps", response_class=HTMLResponse)
def sweeps_page(request: Request, db: Database = Depends(get_db)) -> HTMLResponse:
    """The sweeps with their progress, and the form that queues a new one."""
    sweep_leases(db)
    with db.read() as session:
        listed = sweeps.list_sweeps(session)
    fields = [f for f in schema() if f["name"] not in sweeps.SWEEP_KEYS]
    return _page(
        request,
        "sweeps.html",
        {
            "sweeps": listed,
            "tasks": list(TASKS),
            "fields": fields,
            "presets": sweeps.paper_presets(),
            "ablation_fields": [f for f in fields if f["name"] in sweeps.ABLATION_SETTINGS],
        },
    )


def _sweep_page(request: Request, db: Database, sweep_id: int, template: str) -> HTMLResponse:
    """The sweep page, or the part of it the runs stream refreshes."""
    sweep_leases(db)
    with db.read() as session:
        try:
            sweep = sweeps.sweep_detail(session, sweeps.get_sweep(session, sweep_id))
        except NotFound:
            return not_found_page(request, f"There is no sweep {sweep_id}.")
        context = {
            "sweep": sweep,
            "rows": results.aggregate(session, sweep_id),
            "ablations": results.ablations(session, sweep_id),
        }
    return _page(request, template, context)


@router.get("/sweeps/{sweep_id:int}", response_class=HTMLResponse, responses=PAGE_NOT_FOUND)
def sweep_page(sweep_id: int, request: Request, db: Database = Depends(get_db)) -> HTMLResponse:
    return _sweep_page(request, db, sweep_id, "sweep.html")


@router.get("/sweeps/{sweep_id:int}/progress", response_class=HTMLResponse, responses=PAGE_NOT_FOUND)
def sweep_progress(sweep_id: int, request: Request, db: Database = Depends(get_db)) -> HTMLResponse:
    return _sweep_page(request, db, sweep_id, "_sweep_progress.html")
