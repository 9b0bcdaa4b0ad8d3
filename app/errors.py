"""How errors become responses. Every error names what went wrong in a form a client can
act on: 422s list each bad field by its location, 404s of browser pages are the styled
page, and nothing a client sent is echoed back (it may be huge, or a NaN that JSON
cannot carry, which made FastAPI's own validation handler fail with a 500)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.auth import CSRF_COOKIE
from app.deps import TEMPLATES
from app.services import Conflict, NotFound, Retired
from app.urls import app_path
from dlite.config import ConfigError


def _json_safe(value: Any) -> Any:
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's shape (`detail`: a list of loc/msg/type) without the offending input."""
    detail = [
        {
            "loc": list(e.get("loc", ())),
            "msg": e.get("msg", ""),
            "type": e.get("type", "value_error"),
            **({"ctx": {k: _json_safe(v) for k, v in e["ctx"].items()}} if e.get("ctx") else {}),
        }
        for e in exc.errors()
    ]
    return JSONResponse({"detail": detail}, 422)


def _config_error(_: Request, exc: ConfigError) -> JSONResponse:
    """Every bad setting at once, in the validation errors' shape, so a form marks them all."""
    detail = [
        {"loc": ["body", "task"] if name == "task" else ["body", "config", name], "msg": message, "type": "value_error"}
        for name, message in exc.errors
    ]
    return JSONResponse({"detail": detail}, 422)


def wants_html(request: Request) -> bool:
    """Everything outside /api is the dashboard's, answered in HTML."""
    return not app_path(request).startswith("/api/")


def not_found_page(request: Request, message: str) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request, "not_found.html", {"message": message, "csrf": request.cookies.get(CSRF_COOKIE, "")}, status_code=404
    )


def _methods_at(routes: list[Any], path: str) -> set[str]:
    """Methods of every route at `path`; FastAPI keeps included routers nested."""
    found: set[str] = set()
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            found |= _methods_at(nested.routes, path)
        elif isinstance(route, APIRoute) and route.path_regex.match(path):
            assert route.methods is not None  # APIRoute defaults them to {"GET"}
            found |= route.methods
    return found


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """An unknown page address (`/runs/abc`) gets the dashboard's not-found page; a 405's
    Allow names the methods of all routes at the path, not only of the first one found."""
    if exc.status_code == 404 and wants_html(request):
        return not_found_page(request, f"There is no page at {request.url.path}.")
    if exc.status_code == 405:
        allowed = _methods_at(request.app.routes, app_path(request))
        exc = StarletteHTTPException(405, exc.detail, headers={"Allow": ", ".join(sorted(allowed))})
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]  # Starlette's stub: handlers take Exception
    app.add_exception_handler(ConfigError, _config_error)  # type: ignore[arg-type]  # Starlette's stub: handlers take Exception
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]  # Starlette's stub: handlers take Exception
    app.add_exception_handler(NotFound, lambda _r, e: JSONResponse({"detail": str(e)}, 404))
    app.add_exception_handler(Conflict, lambda _r, e: JSONResponse({"detail": str(e)}, 409))
    app.add_exception_handler(Retired, lambda _r, e: JSONResponse({"detail": str(e)}, 410))
