"""OpenAPI schema and Swagger UI, behind the same token as everything else: FastAPI's
default public /docs would describe the API to anyone who finds the tunnel's URL. Swagger
UI's own files come from the installed `fastapi-offline` package, served by this server like
/static (public: they say nothing about this API), since FastAPI's default page loads them
from a CDN, which an offline machine cannot reach and which would learn of every visit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from app.auth import require_api, require_page
from app.urls import url

router = APIRouter(tags=["docs"])

SWAGGER_UI = Path(fastapi_offline.__file__).parent / "static"
SWAGGER_UI_PATH = "/vendor/swagger-ui"
"""Where app.main mounts SWAGGER_UI."""


@router.get("/api/openapi.json", dependencies=[Depends(require_api)], include_in_schema=False)
def openapi(request: Request) -> dict[str, Any]:
    return request.app.openapi()


@router.get("/docs", dependencies=[Depends(require_page)], include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    """Swagger UI's online validator is off too: it would send the document to swagger.io."""
    assets = url(request, SWAGGER_UI_PATH)
    return get_swagger_ui_html(
        openapi_url=url(request, "/api/openapi.json"),
        title="DiffuserLite Lab API",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},
    )
