"""HTML pages. A placeholder run list for now; the dashboard adds its pages here, each
with `require_page` so a browser without a session is sent to /login."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from app.auth import CSRF_COOKIE, require_page
from app.db import Database
from app.deps import TEMPLATES, get_db
from app.services import runs
from app.services.claims import sweep_leases

router = APIRouter(dependencies=[Depends(require_page)], tags=["pages"])


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request, db: Database = Depends(get_db)) -> HTMLResponse:
    sweep_leases(db)
    with db.read() as session:
        items = [runs.run_summary(r) for r in runs.list_runs(session)]
    return TEMPLATES.TemplateResponse(request, "runs.html", {
        "runs": items, "csrf": request.cookies.get(CSRF_COOKIE, "")})
