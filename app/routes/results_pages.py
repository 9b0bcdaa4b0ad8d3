"""The results page: finished runs over seeds beside the paper's numbers, for all runs or
one sweep's (GET /api/results gives the same rows). Its markup comes from templates."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from app.auth import require_page
from app.db import Database
from app.deps import get_db
from app.protocol import MAX_INT
from app.routes.pages import _page
from app.routes.responses import TO_LOGIN
from app.services import results

router = APIRouter(dependencies=[Depends(require_page)], tags=["pages"], responses=TO_LOGIN)


@router.get("/results", response_class=HTMLResponse)
def results_page(
    request: Request, db: Database = Depends(get_db), sweep: int | None = Query(None, ge=1, le=MAX_INT)
) -> HTMLResponse:
    with db.read() as session:
        rows, ablations = results.aggregate(session, sweep), results.ablations(session, sweep)
    return _page(request, "results.html", {"rows": rows, "ablations": ablations, "sweep": sweep})
