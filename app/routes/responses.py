"""What routes answer besides their success, declared in the OpenAPI document so that
clients and fuzzers reading /api/openapi.json see the server's real responses; and the
answer of a chart's data as CSV or JSON, which a run's and the compared runs' charts share."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from app.services import compare


class Problem(BaseModel):
    """Every error but a 422 (whose `detail` lists the bad fields) is one sentence."""

    detail: str


_WHY = {
    400: "The body is not JSON text (for instance not UTF-8).",
    401: "No valid token: send `Authorization: Bearer <token>`, or log in at /login.",
    403: "A logged-in browser changed something without the CSRF token (X-CSRF-Token header).",
    404: "No such run (or command, worker, figure).",
    409: "The run is not in a state that allows this (for a worker: its attempt was fenced off).",
}

Responses = dict[int | str, dict[str, Any]]


def problems(*codes: int) -> Responses:
    return {code: {"model": Problem, "description": _WHY[code]} for code in codes}


def body(media_type: str, description: str, status: int = 200) -> Responses:
    """An answer that is not JSON: its media type, with a string body (server-sent events:
    each event's fields)."""
    schema: dict[str, Any] = {"type": "string"}
    if media_type == "text/event-stream":
        schema = {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "event": {"type": "string"},
                "retry": {"type": "integer"},
                "data": {"type": "string", "description": 'JSON: {"type": kind, "run_id": ..., "data": {...}}'},
            },
        }
    return {status: {"description": description, "content": {media_type: {"schema": schema}}}}


TOO_LARGE: Responses = {
    413: {
        "description": "The request body is over the server's limit (16 MiB by default).",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}
API = {**problems(400, 401, 403), **TOO_LARGE}
"""Every /api route: a body that is not JSON, the token, the CSRF check of cookie requests,
the body limit."""
PAGE_NOT_FOUND = body("text/html", "The dashboard's not-found page.", 404)
TO_LOGIN: Responses = {303: {"description": "Not logged in: a redirect to /login."}}


def table_response(table: dict[str, Any], fmt: str, filename: str) -> Response:
    """A chart's table (app.services.compare.chart_table) as a CSV or JSON download."""
    disposition = {"Content-Disposition": f'attachment; filename="{filename}.{fmt}"'}
    if fmt == "json":
        return JSONResponse(table, headers=disposition)
    return StreamingResponse(
        compare.to_csv(table["columns"], table["rows"]), media_type="text/csv; charset=utf-8", headers=disposition
    )


CHART_BODY = {**body("text/csv", "The chart's data as CSV (or JSON: title, columns, rows)."), **problems(404)}
