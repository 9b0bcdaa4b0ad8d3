"""Server-sent events, fed by polling the `changes` table.

Polling the database (rather than an in-process queue) works with several server
processes and with SQLite alike. Each message's `id:` is the change id, so a browser
that reconnects with Last-Event-ID (or a page that opens the stream with `?since=`
taken from the run's `change_id`) receives exactly what it missed. Message data is
JSON `{"type": kind, "run_id": ..., "data": {...}}`; kinds are run, metrics,
checklist, checkpoint, evaluation, device_check, event and console (new console lines:
the run page re-reads its panels).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from app.auth import require_api
from app.db import Database
from app.deps import get_db
from app.models import stored_id
from app.protocol import MAX_INT
from app.routes.params import RunId
from app.routes.responses import API, body, problems
from app.services import runs
from app.services.events import changes_since, latest_change_id

router = APIRouter(prefix="/api", dependencies=[Depends(require_api)], tags=["stream"], responses=API)


def _start_id(db: Database, last_event_id: str | None, since: int | None) -> int:
    """Where a stream starts; ids out of the database's integer range start from now."""
    if last_event_id and last_event_id.strip().isdigit() and int(last_event_id) <= MAX_INT:
        return int(last_event_id)
    if since is not None:
        return since
    with db.read() as session:
        return latest_change_id(session)


SESSION_RECHECK_SECONDS = 1.0
"""How soon a stream opened by a browser session ends after that session is revoked (logout)."""


async def _messages(request: Request, db: Database, run_id: int | None, last: int) -> AsyncIterator[str]:
    """The stream's messages until the client goes away, or until the browser session that
    opened it is revoked: a logout ends everything the session opened (a bearer token's
    streams live as long as the token, which only a restart with another token revokes)."""
    settings = request.app.state.settings
    auth = request.app.state.auth
    by_session = not auth.bearer_ok(request)
    checked = time.monotonic()

    def fetch(after: int) -> list[tuple[int, str]]:
        with db.read() as session:
            return [
                (stored_id(c), json.dumps({"type": c.kind, "run_id": c.run_id, "data": c.data}))
                for c in changes_since(session, after, run_id)
            ]

    yield "retry: 2000\n\n"
    quiet_since = time.monotonic()
    while not await request.is_disconnected():
        if by_session and time.monotonic() - checked >= SESSION_RECHECK_SECONDS:
            if await anyio.to_thread.run_sync(auth.session_id, request) is None:
                return
            checked = time.monotonic()
        batch = await anyio.to_thread.run_sync(fetch, last)
        for change_id, data in batch:
            yield f"id: {change_id}\ndata: {data}\n\n"
            last = change_id
        if batch:
            quiet_since = time.monotonic()
            continue  # there may be more than one page waiting
        if time.monotonic() - quiet_since >= settings.sse_keepalive_seconds:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await anyio.sleep(settings.sse_poll_seconds)


def _stream(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@router.get(
    "/runs/stream",
    response_class=StreamingResponse,
    responses=body("text/event-stream", "Server-sent events, one JSON message each (module docstring)."),
)
async def all_runs(
    request: Request,
    since: int | None = Query(None, ge=0, le=MAX_INT),
    last_event_id: str | None = Header(None),
    db: Database = Depends(get_db),
) -> StreamingResponse:
    """Status, stage and step of every run, plus all events: what the run list needs."""
    start = await anyio.to_thread.run_sync(_start_id, db, last_event_id, since)
    return _stream(_messages(request, db, None, start))


@router.get(
    "/runs/{run_id}/events/stream",
    response_class=StreamingResponse,
    responses={**problems(404), **body("text/event-stream", "Server-sent events of this run.")},
)
async def one_run(
    run_id: RunId,
    request: Request,
    since: int | None = Query(None, ge=0, le=MAX_INT),
    last_event_id: str | None = Header(None),
    db: Database = Depends(get_db),
) -> StreamingResponse:
    """Everything that happens to one run, metric points included."""

    def check_and_start() -> int:
        with db.read() as session:
            runs.get_run(session, run_id)
        return _start_id(db, last_event_id, since)

    start = await anyio.to_thread.run_sync(check_and_start)
    return _stream(_messages(request, db, run_id, start))
