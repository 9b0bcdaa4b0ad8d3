"""Browser login with the server token, and logout."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from app.auth import require_page
from app.deps import TEMPLATES

router = APIRouter(tags=["auth"])


def _safe_next(path: str) -> str:
    """Only same-site paths, so the login form cannot be made to redirect elsewhere."""
    return path if path.startswith("/") and not path.startswith(("//", "/\\")) else "/"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login", response_model=None)
def login(request: Request, token: str = Form(""), next: str = Form("/")) -> HTMLResponse | RedirectResponse:
    auth = request.app.state.auth
    client = request.client.host if request.client else "unknown"
    context = {"next": _safe_next(next)}
    if auth.login_blocked(client):
        return TEMPLATES.TemplateResponse(request, "login.html", {
            **context, "error": "Too many failed attempts; wait a minute."}, status_code=429)
    if not auth.token_ok(token.strip()):
        auth.login_failed(client)
        return TEMPLATES.TemplateResponse(request, "login.html", {
            **context, "error": "Wrong token."}, status_code=401)
    auth.login_succeeded(client)
    response = RedirectResponse(context["next"], status_code=303)
    auth.start_session(request, response)
    return response


@router.post("/logout", dependencies=[Depends(require_page)])
def logout(request: Request) -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303)
    request.app.state.auth.end_session(response)
    return response
