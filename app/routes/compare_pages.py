"""The compare page: runs side by side, their differing config keys and final videos come
with the page; lab.js draws the charts from GET /api/compare. Like the other pages, all
markup comes from templates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from app.auth import require_page
from app.db import Database
from app.deps import get_db
from app.errors import not_found_page
from app.models import Run, stored_id
from app.routes.pages import _page
from app.routes.responses import PAGE_NOT_FOUND, TO_LOGIN
from app.services import NotFound, artifacts, compare
from app.urls import root
from dlite.config import FIELDS
from dlite.tasks import REFERENCE_CURVES

router = APIRouter(dependencies=[Depends(require_page)], tags=["pages"], responses=TO_LOGIN)


def _compared_videos(request: Request, session: Session, picked: list[Run]) -> list[dict[str, Any]]:
    """Each run's newest final video per variant, with the URL of its plans (whose score the
    page reads into the caption)."""
    newest = artifacts.newest_final_videos(session, [stored_id(r) for r in picked])
    rows = []
    for run in picked:
        for video in newest.get(stored_id(run), []):
            out = artifacts.artifact_out(video, root(request))
            rows.append(
                {
                    **out.model_dump(),
                    "run_id": run.id,
                    "label": compare.label(run),
                    "plans_url": out.url.removesuffix(".webm") + ".plans.json",
                }
            )
    return rows


@router.get("/compare", response_class=HTMLResponse, responses=PAGE_NOT_FOUND)
def compare_page(
    request: Request,
    db: Database = Depends(get_db),
    runs: str = Query("", max_length=400),
    color_by: str | None = Query(None, max_length=100, description="a config key (or task): one colour per value"),
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
        table = [
            {
                "id": r.id,
                "label": compare.label(r),
                "task": r.task,
                "status": r.status,
                "variant": r.config.get("variant"),
                "seed": r.config.get("seed"),
                "step": r.step,
                "colour": colour,
                "coloured_by": None if color_by is None else compare.setting(r, color_by),
            }
            for r, colour in zip(picked, colours)
        ]
        diff = compare.config_diff(picked)
        videos = _compared_videos(request, session, picked)
    references = {r.task: REFERENCE_CURVES[r.task] for r in picked if r.task in REFERENCE_CURVES and not r.is_demo}
    return _page(
        request,
        "compare.html",
        {
            "runs": table,
            "diff": diff,
            "ids": ",".join(map(str, ids)),
            "charts": compare.compared_charts(picked),
            "references": references,
            "color_by": color_by,
            "videos": videos,
        },
    )
