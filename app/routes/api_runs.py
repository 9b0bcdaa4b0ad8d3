"""The run API used by the dashboard and scripts."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict

from app.auth import require_api
from app.db import Database
from app.deps import get_db
from app.services import NotFound, metrics, runs
from app.services.claims import sweep_leases
from app.services.events import event_dict, list_events
from dlite.config import schema
from dlite.tasks import TASKS

router = APIRouter(prefix="/api", dependencies=[Depends(require_api)], tags=["runs"])


class CreateRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    name: Optional[str] = None
    config: dict[str, Any] = {}
    is_demo: bool = False


@router.post("/runs", status_code=201)
def create_run(body: CreateRun, db: Database = Depends(get_db)) -> dict[str, Any]:
    """Resolve the overrides with dlite's config (ConfigError → 422 naming the field)."""
    with db.write() as session:
        run = runs.create_run(session, body.task, body.name, body.config, body.is_demo)
        return runs.run_detail(session, run)


@router.get("/runs")
def list_runs(status: Optional[str] = None, db: Database = Depends(get_db)) -> list[dict[str, Any]]:
    sweep_leases(db)
    with db.read() as session:
        return [runs.run_summary(r) for r in runs.list_runs(session, status)]


@router.get("/runs/{run_id}")
def get_run(run_id: int, db: Database = Depends(get_db)) -> dict[str, Any]:
    with db.read() as session:
        return runs.run_detail(session, runs.get_run(session, run_id))


@router.get("/runs/{run_id}/metrics")
def get_metrics(run_id: int, key: Optional[str] = None,
                max_points: int = Query(2000, ge=4, le=200_000),
                db: Database = Depends(get_db)) -> dict[str, Any]:
    """Without `key`: the run's series names. With it: one series, min/max downsampled."""
    with db.read() as session:
        runs.get_run(session, run_id)
        if key is None:
            return {"keys": metrics.metric_keys(session, run_id)}
        out = metrics.series(session, run_id, key, max_points)
        if not out["total"]:
            raise NotFound(f"run {run_id} has no metric {key!r}")
        return out


@router.get("/runs/{run_id}/events")
def get_events(run_id: int, since: int = 0, db: Database = Depends(get_db)) -> list[dict[str, Any]]:
    with db.read() as session:
        runs.get_run(session, run_id)
        return [event_dict(e) for e in list_events(session, run_id, since)]


@router.post("/runs/{run_id}/backup", status_code=202)
def backup(run_id: int, db: Database = Depends(get_db)) -> dict[str, Any]:
    """Ask the run's worker to push its newest checkpoint to the Hub now."""
    with db.write() as session:
        command = runs.queue_command(session, runs.get_run(session, run_id), "backup")
        return runs.command_dict(command)


@router.post("/runs/{run_id}/cancel")
def cancel(run_id: int, db: Database = Depends(get_db)) -> dict[str, Any]:
    with db.write() as session:
        return runs.cancel_run(session, runs.get_run(session, run_id))


@router.post("/runs/{run_id}/retry")
def retry(run_id: int, db: Database = Depends(get_db)) -> dict[str, Any]:
    with db.write() as session:
        return runs.run_summary(runs.retry_run(session, runs.get_run(session, run_id)))


@router.get("/runs/{run_id}/export")
def export(run_id: int, db: Database = Depends(get_db)) -> dict[str, Any]:
    with db.read() as session:
        return runs.export_run(session, runs.get_run(session, run_id))


@router.get("/results.md")
def results(db: Database = Depends(get_db)) -> PlainTextResponse:
    with db.read() as session:
        return PlainTextResponse(runs.results_markdown(session), media_type="text/markdown; charset=utf-8")


@router.get("/config/schema")
def config_schema() -> dict[str, Any]:
    """The form's fields come from dlite's config, never from a copy here."""
    return {"fields": schema(), "tasks": list(TASKS)}
