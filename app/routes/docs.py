"""OpenAPI schema and Swagger UI, behind the same token as everything else: FastAPI's
default public /docs would describe the API to anyone who finds the tunnel's URL."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from app.auth import require_api, require_page
from app.urls import url

router = APIRouter(tags=["docs"])


@router.get("/api/openapi.json", dependencies=[Depends(require_api)], include_in_schema=False)
def openapi(request: Request) -> dict[str, Any]:
    return request.app.openapi()


@router.get("/docs", dependencies=[Depends(require_page)], include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=url(request, "/api/openapi.json"), title="DiffuserLite Lab API")
