"""HTML pages: the run list, the new-run form and the run page, plus the fragments the
pages re-fetch when the event stream says something changed (so all markup comes from
the templates here, none is rebuilt in JavaScript), and Plotly's JavaScript served from
the installed `plotly` package so the dashboard works offline. Every route has
`require_page`: a browser without a session is sent to /login."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse

from app.auth import CSRF_COOKIE, require_page
from app.db import Database
from app.deps import TEMPLATES, get_db, get_settings
from app.errors import not_found_page
from app.models import Run
from app.protocol import CHECKLIST
from app.routes.responses import PAGE_NOT_FOUND, TO_LOGIN, body
from app.routes.run_list_query import RUNS_PER_PAGE, RunListQuery, run_list_page
from app.services import NotFound, console, dashboard, events, figures, run_list, runs
from app.services.claims import sweep_leases
from app.services.system_metrics import SYSTEM_CHARTS
from app.settings import Settings
from dlite.config import schema
from dlite.tasks import TASKS

router = APIRouter(dependencies=[Depends(require_page)], tags=["pages"], responses=TO_LOGIN)

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
STAGES = (
    ("data", "Data"),
    ("device", "Stage 0: device check"),
    ("smoke", "Stage 0: smoke test"),
    ("train", "Stage 1: training"),
    ("reflow", "R2: reflow"),
    ("eval", "Stage 2: evaluation"),
)
CONSOLE_SHOWN = 200
"""Console entries on the run page, which re-renders its panels on every change; the API has all kept."""
GROUP_ORDER = ("task", "data", "model", "training", "planning", "reflow", "evaluation", "backup")


def _page(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {"csrf": request.cookies.get(CSRF_COOKIE, ""), "plotly_version": plotly.__version__, **context},
        status_code=status_code,
    )


@router.get(
    "/vendor/plotly.min.js",
    response_class=FileResponse,
    responses=body("text/javascript", "Plotly's JavaScript bundle."),
)
def plotly_js() -> FileResponse:
    """Versioned by the page's `?v=` query, so browsers may keep it for a day."""
    return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "private, max-age=86400"})


def _runs_context(db: Database, query: RunListQuery) -> dict[str, Any]:
    sweep_leases(db)
    with db.read() as session:
        page, total = run_list.query_runs(session, query.filter(), query.sort, RUNS_PER_PAGE, query.offset)
        return {"runs": dashboard.run_rows(session, page), **run_list_page(session, query, total, len(page))}


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request, query: RunListQuery = Depends(), db: Database = Depends(get_db)) -> HTMLResponse:
    return _page(request, "runs.html", _runs_context(db, query))


@router.get("/runs/table", response_class=HTMLResponse)
def runs_table(request: Request, query: RunListQuery = Depends(), db: Database = Depends(get_db)) -> HTMLResponse:
    return _page(request, "_runs_table.html", _runs_context(db, query))


@router.get("/runs/new", response_class=HTMLResponse, responses=PAGE_NOT_FOUND)
def new_run_page(
    request: Request, db: Database = Depends(get_db), source: str | None = Query(None, alias="from", max_length=30)
) -> HTMLResponse:
    """The form starts at the config defaults, or for "clone and edit" (`?from=<run id>`)
    at that run's config, so a failed run can be started again with a change."""
    fields = schema()
    clone = None
    if source is not None:
        with db.read() as session:
            try:
                if not (source.isascii() and source.isdigit()) or int(source) > 2**63 - 1:
                    raise NotFound(source)
                clone = runs.get_run(session, int(source))
            except NotFound:
                return not_found_page(request, f"There is no run {source} to clone.")
    values = clone.config if clone else {}
    fields = [{**f, "value": values.get(f["name"], f["default"])} for f in fields]
    groups = [(g, [f for f in fields if f["group"] == g and f["name"] != "task"]) for g in GROUP_ORDER]
    return _page(
        request,
        "new_run.html",
        {
            "tasks": list(TASKS),
            "default_task": clone.task if clone else next(f["default"] for f in fields if f["name"] == "task"),
            "groups": [(g, fs) for g, fs in groups if fs],
            "clone": clone,
        },
    )


def _panels_context(db: Database, settings: Settings, run_id: int) -> dict[str, Any] | None:
    """Everything the run page shows besides the charts; None for an unknown run."""
    with db.read() as session:
        try:
            run: Run = runs.get_run(session, run_id)
        except NotFound:
            return None
        detail = runs.run_detail(session, run)
        results = dashboard.results(session, run)
        facts = dashboard.run_facts(session, run, settings.lease_seconds)
        log = events.list_events(session, run_id, limit=500, newest_first=True)
        lines = console.newest_lines(session, run_id, CONSOLE_SHOWN)
    items = {i["key"]: i for i in detail["checklist"]}
    stages = [
        (title, [items[k] for k, _ in CHECKLIST if k in items and k.split(".")[0] == stage]) for stage, title in STAGES
    ]
    stages = [(title, keys) for title, keys in stages if keys]
    backups = [c for c in detail["commands"] if c["kind"] == "backup"]
    figure_dir = figures.results_dir(settings.data_dir, run_id)
    return {
        "run": detail,
        "stages": stages,
        "results": results,
        "events": dashboard.event_rows(log),
        "facts": facts,
        "console": dashboard.console_rows(lines),
        "planning": dashboard.planning_speed(detail["evaluations"], run.config, dashboard.device_label(facts)),
        "device_check": dashboard.device_check(detail["device_check"]),
        "backup_target": runs.backup_target(detail["config"]),
        "no_backup_target": runs.NO_BACKUP_TARGET,
        "params": dashboard.param_rows(detail["config"]),
        "backup": backups[-1] if backups else None,
        "figures": [f for f in dashboard.FIGURE_FILES if (figure_dir / f).is_file()],
    }


@router.get("/runs/{run_id:int}", response_class=HTMLResponse, responses=PAGE_NOT_FOUND)
def run_page(
    run_id: int, request: Request, db: Database = Depends(get_db), settings: Settings = Depends(get_settings)
) -> HTMLResponse:
    context = _panels_context(db, settings, run_id)
    if context is None:
        return not_found_page(request, f"There is no run {run_id}.")
    charts = [{**c, "keys": list(c["keys"])} for c in dashboard.charts(dashboard.levels([context["run"]["config"]]))]
    system = [{**c, "keys": list(c["keys"])} for c in SYSTEM_CHARTS]
    return _page(request, "run.html", {**context, "charts": charts, "system_charts": system})


@router.get("/runs/{run_id:int}/panels", response_class=HTMLResponse, responses=PAGE_NOT_FOUND)
def run_panels(
    run_id: int, request: Request, db: Database = Depends(get_db), settings: Settings = Depends(get_settings)
) -> HTMLResponse:
    context = _panels_context(db, settings, run_id)
    if context is None:
        return not_found_page(request, f"There is no run {run_id}.")
    return _page(request, "_run_panels.html", context)
