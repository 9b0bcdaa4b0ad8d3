"""Results over seeds: finished runs by task and variant beside the paper's numbers, as
JSON or as a Markdown table. Runs compared side by side are app/routes/api_compare.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse

from app.auth import require_api
from app.db import Database
from app.deps import get_db
from app.protocol import MAX_INT
from app.routes.responses import API, body
from app.schemas import ResultsTable
from app.services import results

router = APIRouter(prefix="/api", dependencies=[Depends(require_api)], tags=["results"], responses=API)

SweepFilter = Annotated[int | None, Query(ge=1, le=MAX_INT, description="only the runs of this sweep")]


@router.get("/results", response_model=ResultsTable)
def get_results(sweep: SweepFilter = None, db: Database = Depends(get_db)) -> dict[str, Any]:
    """Finished runs by task and variant: seeds, mean ± s.e. over seeds, the paper's value
    ± s.e. with its source, the difference and whether they agree, planning frequency.
    `ablations`: each ablation sweep's runs (left out of `rows`) by the value of the setting
    it varies, beside the paper's ablation numbers (Lite-D's, which `caveat` says)."""
    with db.read() as session:
        return {"rows": results.aggregate(session, sweep), "ablations": results.ablations(session, sweep)}


@router.get("/results.md", response_class=PlainTextResponse, responses=body("text/markdown", "The results table."))
def results_md(sweep: SweepFilter = None, db: Database = Depends(get_db)) -> PlainTextResponse:
    with db.read() as session:
        rows = results.aggregate(session, sweep)
        text = results.markdown(rows, results.ablations(session, sweep), results.devices(session, rows))
    return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")
