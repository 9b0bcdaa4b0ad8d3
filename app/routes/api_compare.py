"""Runs compared side by side, and each compared chart's data as CSV or JSON
(app/services/compare.py). One run's chart data is GET /api/runs/{id}/charts/{chart}.{fmt}."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from app.auth import require_api
from app.db import Database
from app.deps import get_db
from app.routes.params import ChartFormat, MaxPoints
from app.routes.responses import API, CHART_BODY, problems, table_response
from app.schemas import Comparison
from app.services import compare

router = APIRouter(prefix="/api", dependencies=[Depends(require_api)], tags=["compare"], responses=API)

RunIds = Annotated[
    str,
    Query(
        alias="runs",
        max_length=400,
        json_schema_extra={"pattern": compare.IDS_PATTERN},
        description=f"1 to {compare.MAX_COMPARED} run ids separated by commas, e.g. 3,7",
    ),
]
"""Checked by compare.parse_ids, whose 422 says what is wrong; the pattern states the same rules."""


def _run_ids(text: str) -> list[int]:
    try:
        return compare.parse_ids(text)
    except ValueError as e:
        raise _bad_query("runs", str(e)) from None


def _bad_query(name: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("query", name), "msg": message, "type": "value_error"}])


@router.get("/compare", response_model=Comparison, responses=problems(404))
def get_comparison(runs_: RunIds, max_points: MaxPoints = 1000, db: Database = Depends(get_db)) -> dict[str, Any]:
    """The runs, the config keys that differ, and the loss and score charts' data."""
    ids = _run_ids(runs_)
    with db.read() as session:
        return compare.comparison(session, compare.get_runs(session, ids), max_points)


@router.get("/compare/charts/{chart}.{fmt}", responses=CHART_BODY)
def compare_chart(
    chart: str, fmt: ChartFormat, runs_: RunIds, max_points: MaxPoints = 1000, db: Database = Depends(get_db)
) -> Response:
    ids = _run_ids(runs_)
    with db.read() as session:
        table = compare.chart_table(session, compare.get_runs(session, ids), chart, max_points)
    return table_response(table, fmt, f"{chart}-runs-{'-'.join(map(str, ids))}")
