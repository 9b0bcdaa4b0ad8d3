"""Results over seeds, runs compared, chart data as CSV or JSON, a run's whole metric
history, and the user's labels on a run (tags, note, archived) and its deletion."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from app.auth import require_api
from app.db import Database
from app.deps import get_db
from app.protocol import MAX_INT, STRICT_BODY
from app.routes.params import RunId, Tags
from app.routes.responses import API, body, problems
from app.services import compare, results, run_list, runs

router = APIRouter(prefix="/api", dependencies=[Depends(require_api)], tags=["results"], responses=API)

SweepFilter = Annotated[Optional[int], Query(ge=1, le=MAX_INT, description="only the runs of this sweep")]
RunIds = Annotated[str, Query(alias="runs", max_length=400, json_schema_extra={"pattern": compare.IDS_PATTERN},
                              description=f"1 to {compare.MAX_COMPARED} run ids separated by commas, e.g. 3,7")]
"""Checked by compare.parse_ids, whose 422 says what is wrong; the pattern states the same rules."""
MaxPoints = Annotated[int, Query(ge=4, le=200_000, description="points per series at most (min/max downsampled)")]
Format = Literal["csv", "json"]


def _run_ids(text: str) -> list[int]:
    try:
        return compare.parse_ids(text)
    except ValueError as e:
        raise _bad_query("runs", str(e)) from None


def _bad_query(name: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("query", name), "msg": message, "type": "value_error"}])


@router.get("/results")
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


@router.get("/compare", responses=problems(404))
def get_comparison(runs_: RunIds, max_points: MaxPoints = 1000,
                   db: Database = Depends(get_db)) -> dict[str, Any]:
    """The runs, the config keys that differ, and the loss and score charts' data."""
    ids = _run_ids(runs_)
    with db.read() as session:
        return compare.comparison(session, compare.get_runs(session, ids), max_points)


def _table_response(table: dict[str, Any], fmt: str, filename: str) -> Response:
    disposition = {"Content-Disposition": f'attachment; filename="{filename}.{fmt}"'}
    if fmt == "json":
        return JSONResponse(table, headers=disposition)
    return StreamingResponse(compare.to_csv(table["columns"], table["rows"]), media_type="text/csv; charset=utf-8",
                             headers=disposition)


CHART_BODY = {**body("text/csv", "The chart's data as CSV (or JSON: title, columns, rows)."), **problems(404)}


@router.get("/compare/charts/{chart}.{fmt}", responses=CHART_BODY)
def compare_chart(chart: str, fmt: Format, runs_: RunIds, max_points: MaxPoints = 1000,
                  db: Database = Depends(get_db)) -> Response:
    ids = _run_ids(runs_)
    with db.read() as session:
        table = compare.chart_table(session, compare.get_runs(session, ids), chart, max_points)
    return _table_response(table, fmt, f"{chart}-runs-{'-'.join(map(str, ids))}")


@router.get("/runs/{run_id}/charts/{chart}.{fmt}", responses=CHART_BODY)
def run_chart(run_id: RunId, chart: str, fmt: Format, max_points: MaxPoints = 1000,
              db: Database = Depends(get_db)) -> Response:
    with db.read() as session:
        table = compare.chart_table(session, [runs.get_run(session, run_id)], chart, max_points)
    return _table_response(table, fmt, f"{chart}-run-{run_id}")


@router.get("/runs/{run_id}/metrics.csv", responses={**body("text/csv", "Every metric point of the run."),
                                                      **problems(404)})
def metric_history(run_id: RunId, db: Database = Depends(get_db)) -> StreamingResponse:
    """The run's whole metric history (key, step, value, wall time), not downsampled."""
    with db.read() as session:
        runs.get_run(session, run_id)
    return StreamingResponse(compare.to_csv(compare.HISTORY_COLUMNS, compare.metric_history(db, run_id)),
                             media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="run-{run_id}-metrics.csv"'})


class RunLabels(BaseModel):
    model_config = STRICT_BODY

    tags: Optional[Tags] = Field(None, description="replaces the run's tags")
    note: Optional[str] = Field(None, max_length=10_000, description="free text; empty removes it")
    archived: Optional[bool] = Field(None, description="archived runs are hidden from the runs list by default")


@router.patch("/runs/{run_id}", responses=problems(404))
def label_run(run_id: RunId, labels: RunLabels, db: Database = Depends(get_db)) -> dict[str, Any]:
    """Only the fields sent change (null is no change; an empty note or tag list clears)."""
    with db.write() as session:
        changes = labels.model_dump(exclude_unset=True, exclude_none=True)
        run = run_list.update_labels(session, runs.get_run(session, run_id), changes)
        return runs.run_summary(run)


@router.delete("/runs/{run_id}", responses=problems(404, 409))
def delete_run(run_id: RunId, request: Request, db: Database = Depends(get_db)) -> dict[str, Any]:
    """Deletes the run's records and this machine's files of it (figures, the local
    worker's checkpoints); backups on the Hub or in a backup folder stay."""
    with db.write() as session:
        paths = run_list.delete_run(session, runs.get_run(session, run_id), request.app.state.settings.data_dir)
    run_list.remove_paths(paths)
    return {"deleted": run_id, "removed_paths": [str(p) for p in paths]}
