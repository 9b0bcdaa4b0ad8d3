"""Browser login with the server token, and logout."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from app.auth import require_page
from app.deps import TEMPLATES
from app.routes.responses import body, problems
from app.settings import token_source

router = APIRouter(tags=["auth"])


def _safe_next(path: str) -> str:
    """Only same-site paths, so the login form cannot be made to redirect elsewhere."""
    return path if path.startswith("/") and not path.startswith(("//", "/\\")) else "/"


def _context(request: Request, next: str) -> dict[str, str]:
    return {"next": _safe_next(next), "token_source": token_source(request.app.state.settings)}


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = Query("/", max_length=2000)) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "login.html", {**_context(request, next), "error": None})


@router.post("/login", response_model=None, response_class=HTMLResponse, responses={
    303: {"description": "Logged in: a redirect to `next`, with the session and CSRF cookies."},
    **body("text/html", "Wrong token: the login page again.", 401),
    **body("text/html", "Too many wrong tokens lately: the login page again.", 429)})
def login(request: Request, token: str = Form("", max_length=1000),
          next: str = Form("/", max_length=2000)) -> HTMLResponse | RedirectResponse:
    """A correct token always gets in, however many wrong ones came first (see app.auth)."""
    auth = request.app.state.auth
    client = request.client.host if request.client else "unknown"
    context = _context(request, next)
    if not auth.token_ok(token.strip()):
        if auth.login_blocked(client):
            return TEMPLATES.TemplateResponse(request, "login.html", {
                **context, "error": "Too many failed attempts; wait a minute."}, status_code=429)
        auth.login_failed(client)
        return TEMPLATES.TemplateResponse(request, "login.html", {
            **context, "error": "Wrong token."}, status_code=401)
    auth.login_succeeded(client)
    response = RedirectResponse(context["next"], status_code=303)
    auth.start_session(request, response)
    return response


@router.post("/logout", dependencies=[Depends(require_page)], status_code=303, response_class=RedirectResponse,
             responses={303: {"description": "Logged out (or never logged in): a redirect to /login."},
                        **problems(403)})
def logout(request: Request) -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303)
    request.app.state.auth.end_session(request, response)
    return response
