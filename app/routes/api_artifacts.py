"""A run's evaluation artifacts: the worker's fenced upload of an episode's video and plans,
and the list and files the run and compare pages read (app/services/artifacts.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from app.auth import require_api
from app.db import Database
from app.deps import get_db, get_settings
from app.protocol import ARTIFACT_NAME, MAX_INT
from app.routes.params import RunId
from app.routes.responses import API, Problem, Responses, body, problems
from app.services import artifacts, claims, runs
from app.services.artifacts import ArtifactName, ArtifactOut, Received
from app.settings import Settings
from app.urls import root

router = APIRouter(prefix="/api", dependencies=[Depends(require_api)], tags=["artifacts"], responses=API)

Name = Annotated[
    str,
    Path(
        max_length=64,
        json_schema_extra={"pattern": ARTIFACT_NAME.pattern},
        description="<R1|R2>-<final|quick>-<checkpoint step>.<webm|plans.json>",
    ),
]
"""Checked by artifacts.parse_name, whose 422 says what is wrong; the pattern states the same rule."""
Attempt = Annotated[int, Query(ge=1, le=MAX_INT, description="the worker's attempt (409 when stale)")]
UPLOAD = {
    "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in artifacts.MEDIA_TYPES.values()},
    "required": True,
}


def _parsed(name: str) -> ArtifactName:
    try:
        return artifacts.parse_name(name)
    except artifacts.Invalid as e:
        raise _invalid(e) from None


def _invalid(e: artifacts.Invalid) -> RequestValidationError:
    return RequestValidationError([{"loc": e.loc, "msg": str(e), "type": "value_error"}])


def _fenced_check(db: Database, run_id: int, attempt: int) -> None:
    """Before the body is read: a stale attempt's 16 MiB are never received, and it hears of
    its fence before anything about its file."""
    with db.read() as session:
        claims.fenced_run(session, run_id, attempt)


def _check_and_store(
    db: Database, settings: Settings, run_id: int, attempt: int, parsed: ArtifactName, received: Received, prefix: str
) -> ArtifactOut:
    artifacts.check_content(parsed, received.path)
    with db.write() as session:  # fenced again: the attempt may have lost its lease meanwhile
        run = claims.fenced_run(session, run_id, attempt)
        return artifacts.artifact_out(artifacts.store(session, run, parsed, received, settings.data_dir), prefix)


TOO_LARGE: Responses = {
    413: {
        "description": "Over the artifact's limit (a video: the body limit, 16 MiB by default; plans: "
        "4 MiB); beyond the body limit the server's own plain-text 413.",
        "content": {
            "application/json": {"schema": Problem.model_json_schema()},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
}


@router.put(
    "/runs/{run_id}/artifacts/{name}",
    responses={**problems(404, 409), **TOO_LARGE},
    openapi_extra={"requestBody": UPLOAD},
)
async def put_artifact(
    run_id: RunId,
    name: Name,
    attempt: Attempt,
    request: Request,
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings),
) -> ArtifactOut:
    """The raw file as the body (docs/worker-protocol.md); the same name again replaces it."""
    parsed = _parsed(name)
    limit = artifacts.size_limit(parsed, settings.max_body_bytes)
    await run_in_threadpool(_fenced_check, db, run_id, attempt)
    try:
        artifacts.check_media_type(parsed, request.headers.get("content-type"))
        artifacts.check_length(parsed, request.headers.get("content-length"), limit)
        received = await artifacts.receive(
            request.stream(), parsed, artifacts.run_dir(settings.data_dir, run_id), limit
        )
        try:
            return await run_in_threadpool(
                _check_and_store, db, settings, run_id, attempt, parsed, received, root(request)
            )
        finally:
            received.path.unlink(missing_ok=True)
    except artifacts.TooLarge as e:
        raise HTTPException(413, str(e)) from None
    except artifacts.Invalid as e:
        raise _invalid(e) from None


@router.get("/runs/{run_id}/artifacts", responses=problems(404))
def list_artifacts(run_id: RunId, request: Request, db: Database = Depends(get_db)) -> list[ArtifactOut]:
    """Oldest evaluation first, each one's video before its plans."""
    with db.read() as session:
        runs.get_run(session, run_id)
        return [artifacts.artifact_out(a, root(request)) for a in artifacts.list_artifacts(session, run_id)]


@router.get(
    "/runs/{run_id}/artifacts/{name}",
    response_class=FileResponse,
    responses={**problems(404), **body("video/webm", "The file; `Range` requests get a 206.")},
)
def get_artifact(
    run_id: RunId, name: Name, db: Database = Depends(get_db), settings: Settings = Depends(get_settings)
) -> FileResponse:
    with db.read() as session:
        runs.get_run(session, run_id)
        path, media_type = artifacts.file_of(session, settings.data_dir, run_id, name)
    return FileResponse(path, media_type=media_type)
