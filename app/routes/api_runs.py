"""The run API used by the dashboard and scripts: create, list, read, label (tags, note,
archived), delete, and a run's metrics, charts, figures, checkpoints, events, console,
system samples, commands and export. The worker's side of a run is app/routes/workers.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field, field_validator

from app import schemas
from app.auth import require_api
from app.db import Database
from app.deps import get_db
from app.protocol import SHORT_TEXT, STRICT_BODY
from app.routes.params import ChartFormat, MaxPoints, RunId, Since, Step, Tags
from app.routes.responses import API, CHART_BODY, body, problems, table_response
from app.routes.run_list_query import RunListQuery
from app.services import (
    NotFound,
    checkpoint_files,
    compare,
    console,
    dashboard,
    figures,
    metrics,
    run_list,
    runs,
    system_metrics,
)
from app.services.claims import sweep_leases
from app.services.events import event_dict, list_events
from app.services.stage_marks import stage_marks
from app.urls import root, url
from dlite.config import FIELDS, schema
from dlite.config import json_schema as config_json_schema
from dlite.tasks import TASKS

router = APIRouter(prefix="/api", dependencies=[Depends(require_api)], tags=["runs"], responses=API)


class CreateRun(BaseModel):
    model_config = STRICT_BODY

    task: str = Field(max_length=SHORT_TEXT, json_schema_extra={"enum": list(TASKS)})
    name: str | None = Field(None, max_length=SHORT_TEXT)
    config: dict[str, Any] = Field(
        {},
        max_length=len(FIELDS),
        json_schema_extra=config_json_schema(exclude=("task",)),
        description="overrides of dlite's config: GET /api/config/schema lists them",
    )
    is_demo: bool = False
    tags: Tags = []

    @field_validator("config")
    @classmethod
    def _task_at_the_top(cls, config: dict[str, Any]) -> dict[str, Any]:
        """`task` is the body's own field: one in config would be silently overridden."""
        if "task" in config:
            raise ValueError("set the task in the body's `task`, not in config")
        return config


@router.post("/runs", status_code=201, response_model=schemas.RunDetail)
def create_run(body: CreateRun, db: Database = Depends(get_db)) -> dict[str, Any]:
    """Resolve the overrides with dlite's config (ConfigError → 422 naming the field)."""
    with db.write() as session:
        run = runs.create_run(session, body.task, body.name, body.config, body.is_demo)
        if body.tags:  # as PATCH sets them, so the streams hear of them too
            run = runs.update_labels(session, run, {"tags": body.tags})
        return runs.run_detail(session, run)


@router.get("/runs", response_model=list[schemas.RunSummary])
def list_runs(
    response: Response, filters: RunListQuery = Depends(), db: Database = Depends(get_db)
) -> list[dict[str, Any]]:
    """One page of runs; the `X-Total-Count` header says how many match in all."""
    sweep_leases(db)
    with db.read() as session:
        page, total = run_list.query_runs(session, filters.filter(), filters.sort, filters.limit, filters.offset)
    response.headers["X-Total-Count"] = str(total)
    return [runs.run_summary(r) for r in page]


@router.get("/runs/{run_id}", response_model=schemas.RunDetail, responses=problems(404))
def get_run(run_id: RunId, request: Request, db: Database = Depends(get_db)) -> dict[str, Any]:
    with db.read() as session:
        return runs.run_detail(session, runs.get_run(session, run_id), root(request))


class RunLabels(BaseModel):
    model_config = STRICT_BODY

    tags: Tags | None = Field(None, description="replaces the run's tags")
    note: str | None = Field(None, max_length=10_000, description="free text; empty removes it")
    archived: bool | None = Field(None, description="archived runs are hidden from the runs list by default")


@router.patch("/runs/{run_id}", response_model=schemas.RunSummary, responses=problems(404))
def label_run(run_id: RunId, labels: RunLabels, db: Database = Depends(get_db)) -> dict[str, Any]:
    """Only the fields sent change (null is no change; an empty note or tag list clears)."""
    with db.write() as session:
        changes = labels.model_dump(exclude_unset=True, exclude_none=True)
        run = runs.update_labels(session, runs.get_run(session, run_id), changes)
        return runs.run_summary(run)


@router.delete("/runs/{run_id}", response_model=schemas.DeletedRun, responses=problems(404, 409))
def delete_run(run_id: RunId, request: Request, db: Database = Depends(get_db)) -> dict[str, Any]:
    """Deletes the run's records and this machine's files of it (figures, the local
    worker's checkpoints); backups on the Hub or in a backup folder stay."""
    with db.write() as session:
        paths = runs.delete_run(session, runs.get_run(session, run_id), request.app.state.settings.data_dir)
    runs.remove_paths(paths)
    return {"deleted": run_id, "removed_paths": [str(p) for p in paths]}


@router.get("/runs/{run_id}/metrics", response_model=schemas.MetricKeys | schemas.MetricSeries, responses=problems(404))
def get_metrics(
    run_id: RunId,
    key: str | None = Query(None, max_length=SHORT_TEXT),
    max_points: int = Query(2000, ge=4, le=200_000),
    db: Database = Depends(get_db),
) -> dict[str, Any]:
    """Without `key`: the run's series names. With it: one series, min/max downsampled."""
    with db.read() as session:
        runs.get_run(session, run_id)
        if key is None:
            return {"keys": metrics.metric_keys(session, run_id)}
        out = metrics.chart_series(session, run_id, key, max_points)
        if not out["total"] and not out["nonfinite"]["steps"]:
            raise NotFound(f"run {run_id} has no metric {key!r}")
        return out


@router.get(
    "/runs/{run_id}/metrics.csv", responses={**body("text/csv", "Every metric point of the run."), **problems(404)}
)
def metric_history(run_id: RunId, db: Database = Depends(get_db)) -> StreamingResponse:
    """The run's whole metric history (key, step, value, wall time), not downsampled."""
    with db.read() as session:
        runs.get_run(session, run_id)
    return StreamingResponse(
        compare.to_csv(runs.HISTORY_COLUMNS, runs.metric_history(db, run_id)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="run-{run_id}-metrics.csv"'},
    )


@router.get("/runs/{run_id}/charts", response_model=schemas.ChartData, responses=problems(404))
def get_charts(
    run_id: RunId, max_points: int = Query(1000, ge=4, le=20_000), db: Database = Depends(get_db)
) -> dict[str, Any]:
    """Every chart series of the run page in one request, each read from the per-block
    extremes: a million-step run with five series answers in well under a second; and
    `marks`, the steps where reflow started or an attempt resumed (stage_marks)."""
    with db.read() as session:
        run = runs.get_run(session, run_id)
        return {"series": dashboard.chart_data(session, run, max_points), "marks": stage_marks(session, run)}


@router.get("/runs/{run_id}/charts/{chart}.{fmt}", responses=CHART_BODY)
def run_chart(
    run_id: RunId, chart: str, fmt: ChartFormat, max_points: MaxPoints = 1000, db: Database = Depends(get_db)
) -> Response:
    with db.read() as session:
        table = compare.chart_table(session, [runs.get_run(session, run_id)], chart, max_points)
    return table_response(table, fmt, f"{chart}-run-{run_id}")


@router.post("/runs/{run_id}/figures", response_model=schemas.FigureFiles, responses=problems(404))
def make_figures(run_id: RunId, request: Request, db: Database = Depends(get_db)) -> dict[str, Any]:
    """Write the run's PNG figures under <data_dir>/results/<run_id>/."""
    names = figures.write_run_figures(db, request.app.state.settings.data_dir, run_id)
    return {"files": [{"name": n, "url": url(request, f"/api/runs/{run_id}/figures/{n}")} for n in names]}


@router.get(
    "/runs/{run_id}/figures/{name}",
    response_class=FileResponse,
    responses={**problems(404), **body("image/png", "The figure file.")},
)
def get_figure(run_id: RunId, name: str, request: Request) -> FileResponse:
    """Only the figure names the dashboard writes, so `name` cannot reach other files."""
    path = figures.results_dir(request.app.state.settings.data_dir, run_id) / name
    if name not in dashboard.FIGURE_FILES or not path.is_file():
        raise NotFound(f"run {run_id} has no figure {name!r}; make the figures first")
    return FileResponse(path, media_type="image/png")


@router.get(
    "/runs/{run_id}/checkpoints/{step}/file",
    response_class=FileResponse,
    responses={**problems(404), **body("application/octet-stream", "The checkpoint file (torch.save).")},
)
def get_checkpoint_file(run_id: RunId, step: Step, db: Database = Depends(get_db)) -> FileResponse:
    """A checkpoint this machine has a copy of (the worker's file or its backup folder's),
    verified against the sha256 its worker recorded (also sent as `X-Checkpoint-SHA256`). A
    Hub copy downloads from the Hub; one on another machine's disk cannot be served (404)."""
    with db.read() as session:
        runs.get_run(session, run_id)
        found = [c for c in runs.checkpoints(session, run_id) if c.step == step]
    if not found:
        raise NotFound(f"run {run_id} has no checkpoint at step {step}")
    path = checkpoint_files.readable_copy(found[0])
    if path is None:
        where = checkpoint_files.download_where(found[0])
        raise NotFound(
            f"the checkpoint of step {step} is not readable here: "
            + (
                "download it from the Hub"
                if where == "hub"
                else "the copy on this machine differs from the saved checkpoint"
                if where == "server"
                else "only the worker's disk has it (another machine); back it up to a Hub repo to download it"
            )
        )
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"run{run_id}_{path.name}",
        headers={"X-Checkpoint-SHA256": found[0].sha256},
    )


@router.get("/runs/{run_id}/events", response_model=list[schemas.EventOut], responses=problems(404))
def get_events(run_id: RunId, since: Since = 0, db: Database = Depends(get_db)) -> list[dict[str, Any]]:
    with db.read() as session:
        runs.get_run(session, run_id)
        return [event_dict(e) for e in list_events(session, run_id, since)]


@router.get("/runs/{run_id}/console", response_model=list[schemas.ConsoleEntry], responses=problems(404))
def get_console(
    run_id: RunId, limit: int = Query(console.KEEP, ge=1, le=console.KEEP), db: Database = Depends(get_db)
) -> list[dict[str, Any]]:
    """The newest lines of the run's worker log, oldest first; a traceback is one entry,
    with `summary` its exception line (`summary` and `body` are null for a single line)."""
    with db.read() as session:
        runs.get_run(session, run_id)
        return dashboard.console_rows(console.newest_lines(session, run_id, limit))


@router.get("/runs/{run_id}/system", response_model=schemas.SystemSeries, responses=problems(404))
def get_system_metrics(
    run_id: RunId, max_points: int = Query(500, ge=4, le=20_000), db: Database = Depends(get_db)
) -> dict[str, Any]:
    """The worker's system samples (CPU, RAM, disk, GPU) by key, each series as /charts
    gives it; its `steps` are the samples' Unix seconds. A key the worker could not measure
    (no GPU, no NVML) is absent."""
    with db.read() as session:
        runs.get_run(session, run_id)
        return {"series": system_metrics.system_series(session, run_id, max_points)}


@router.post("/runs/{run_id}/backup", status_code=202, response_model=schemas.RunCommand, responses=problems(404, 409))
def backup(run_id: RunId, db: Database = Depends(get_db)) -> dict[str, Any]:
    """Ask the run's worker to push its newest checkpoint to the Hub now."""
    with db.write() as session:
        command = runs.queue_command(session, runs.get_run(session, run_id), "backup")
        return runs.command_dict(command)


@router.post("/runs/{run_id}/cancel", response_model=schemas.CancelResult, responses=problems(404, 409))
def cancel(run_id: RunId, db: Database = Depends(get_db)) -> dict[str, Any]:
    with db.write() as session:
        return runs.cancel_run(session, runs.get_run(session, run_id))


@router.post("/runs/{run_id}/retry", response_model=schemas.RunSummary, responses=problems(404, 409))
def retry(run_id: RunId, db: Database = Depends(get_db)) -> dict[str, Any]:
    with db.write() as session:
        return runs.run_summary(runs.retry_run(session, runs.get_run(session, run_id)))


@router.get("/runs/{run_id}/export", response_model=schemas.RunExport, responses=problems(404))
def export(run_id: RunId, db: Database = Depends(get_db)) -> dict[str, Any]:
    with db.read() as session:
        return runs.export_run(session, runs.get_run(session, run_id))


@router.get("/config/schema", response_model=schemas.ConfigSchema)
def config_schema() -> dict[str, Any]:
    """The form's fields come from dlite's config, never from a copy here."""
    return {"fields": schema(), "tasks": list(TASKS)}
