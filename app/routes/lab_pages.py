"""Pages for working over many runs: sweeps (queue and follow), results over seeds, and
runs compared side by side. Like the other pages, all markup comes from templates;
lab.js only posts forms and draws the comparison's charts from GET /api/compare."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from app.auth import require_page
from app.db import Database
from app.deps import get_db
from app.protocol import MAX_INT
from app.errors import not_found_page
from app.models import Run
from app.routes.pages import _page
from app.routes.responses import PAGE_NOT_FOUND, TO_LOGIN
from app.services import NotFound, artifacts, compare, results, sweeps
from app.services.claims import sweep_leases
from app.urls import root
from dlite.config import FIELDS, schema
from dlite.tasks import REFERENCE_CURVES, TASKS

router = APIRouter(dependencies=[Depends(require_page)], tags=["pages"], responses=TO_LOGIN)


@router.get("/sweeps", response_class=HTMLResponse)
def sweeps_page(request: Request, db: Database = Depends(get_db)) -> HTMLResponse:
    """The sweeps with their progress, and the form that queues a new one."""
    sweep_leases(db)
    with db.read() as session:
        listed = sweeps.list_sweeps(session)
    fields = [f for f in schema() if f["name"] not in sweeps.SWEEP_KEYS]
    return _page(request, "sweeps.html", {
        "sweeps": listed, "tasks": list(TASKS), "fields": fields, "presets": sweeps.paper_presets(),
        "ablation_fields": [f for f in fields if f["name"] in sweeps.ABLATION_SETTINGS]})


def _sweep_page(request: Request, db: Database, sweep_id: int, template: str) -> HTMLResponse:
    """The sweep page, or the part of it the runs stream refreshes."""
    sweep_leases(db)
    with db.read() as session:
        try:
            sweep = sweeps.sweep_detail(session, sweeps.get_sweep(session, sweep_id))
        except NotFound:
            return not_found_page(request, f"There is no sweep {sweep_id}.")
        context = {"sweep": sweep, "rows": results.aggregate(session, sweep_id),
                   "ablations": results.ablations(session, sweep_id)}
    return _page(request, template, context)


@router.get("/sweeps/{sweep_id:int}", response_class=HTMLResponse, responses=PAGE_NOT_FOUND)
def sweep_page(sweep_id: int, request: Request, db: Database = Depends(get_db)) -> HTMLResponse:
    return _sweep_page(request, db, sweep_id, "sweep.html")


@router.get("/sweeps/{sweep_id:int}/progress", response_class=HTMLResponse, responses=PAGE_NOT_FOUND)
def sweep_progress(sweep_id: int, request: Request, db: Database = Depends(get_db)) -> HTMLResponse:
    return _sweep_page(request, db, sweep_id, "_sweep_progress.html")


@router.get("/results", response_class=HTMLResponse)
def results_page(request: Request, db: Database = Depends(get_db),
                 sweep: Optional[int] = Query(None, ge=1, le=MAX_INT)) -> HTMLResponse:
    with db.read() as session:
        rows, ablations = results.aggregate(session, sweep), results.ablations(session, sweep)
    return _page(request, "results.html", {"rows": rows, "ablations": ablations, "sweep": sweep})


def _compared_videos(request: Request, session: Session, picked: list[Run]) -> list[dict[str, Any]]:
    """Each run's newest final video per variant, with the URL of its plans (whose score the
    page reads into the caption)."""
    newest = artifacts.newest_final_videos(session, [r.id for r in picked])
    rows = []
    for run in picked:
        for video in newest.get(run.id, []):
            out = artifacts.artifact_out(video, root(request))
            rows.append({**out.model_dump(), "run_id": run.id, "label": compare.label(run),
                         "plans_url": out.url.removesuffix(".webm") + ".plans.json"})
    return rows


@router.get("/compare", response_class=HTMLResponse, responses=PAGE_NOT_FOUND)
def compare_page(request: Request, db: Database = Depends(get_db),
                 runs: str = Query("", max_length=400),
                 color_by: Optional[str] = Query(None, max_length=100,
                                                 description="a config key (or task): one colour per value")
                 ) -> HTMLResponse:
    """The runs' table and differing config keys come with the page; the charts' data
    from GET /api/compare, the same answer scripts get. The page picks the colours."""
    try:
        ids = compare.parse_ids(runs)
    except ValueError as e:
        return not_found_page(request, f"Cannot compare: {e}. Tick runs in the runs list and press Compare.")
    if color_by is not None and color_by not in FIELDS:
        return not_found_page(request, f"Cannot colour runs by {color_by!r}: it is not a config setting.")
    with db.read() as session:
        try:
            picked = compare.get_runs(session, ids)
        except NotFound as e:
            return not_found_page(request, f"Cannot compare: {e}.")
        colours = compare.colour_indices(picked, color_by)
        table = [{"id": r.id, "label": compare.label(r), "task": r.task, "status": r.status,
                  "variant": r.config.get("variant"), "seed": r.config.get("seed"), "step": r.step,
                  "colour": colour, "coloured_by": None if color_by is None else compare.setting(r, color_by)}
                 for r, colour in zip(picked, colours)]
        diff = compare.config_diff(picked)
        videos = _compared_videos(request, session, picked)
    references = {r.task: REFERENCE_CURVES[r.task] for r in picked if r.task in REFERENCE_CURVES and not r.is_demo}
    return _page(request, "compare.html", {"runs": table, "diff": diff, "ids": ",".join(map(str, ids)),
                                           "charts": compare.compared_charts(picked), "references": references,
                                           "color_by": color_by, "videos": videos})
