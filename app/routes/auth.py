"""Browser login with the server token or a one-time login link, and logout."""

from __future__ import annotations

import time
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field

from app.auth import LOGIN_LINK_SECONDS, in_iframe, require_api, require_page
from app.deps import TEMPLATES
from app.routes.responses import API, body, problems
from app.settings import token_source
from app.urls import url

router = APIRouter(tags=["auth"])


def _safe_next(path: str) -> str:
    """Only paths inside the app (the prefix goes before them), so neither the login form
    nor a login link can be made to send the browser elsewhere."""
    return path if path.startswith("/") and not path.startswith(("//", "/\\")) else "/"


def _context(request: Request, next: str) -> dict[str, object]:
    """Chromium refuses autofocus in a cross-site frame, with a console error."""
    return {
        "next": _safe_next(next),
        "token_source": token_source(request.app.state.settings),
        "autofocus": not in_iframe(request),
    }


class LoginLink(BaseModel):
    path: str = Field(description="open it (after the server's address) to be logged in: once, within minutes")
    expires_at: float = Field(description="Unix time after which it no longer works")


@router.post("/api/login-links", dependencies=[Depends(require_api)], status_code=201, tags=["auth"], responses=API)
def create_login_link(request: Request, next: str = Query("/", max_length=2000)) -> LoginLink:
    """A one-time login link, for showing the dashboard without showing the token (the Colab
    notebook's dashboard cell): a used or expired link is worthless, even in a saved notebook."""
    code = request.app.state.auth.issue_login_link()
    query = urlencode({"code": code, "next": _safe_next(next)})
    return LoginLink(path=url(request, f"/login?{query}"), expires_at=time.time() + LOGIN_LINK_SECONDS)


@router.get(
    "/login",
    response_model=None,
    response_class=HTMLResponse,
    responses={
        **body(
            "text/html",
            "The login page; for a valid login link (`code`) a page that goes on to `next` by "
            "itself, with the session and CSRF cookies.",
        ),
        **body("text/html", "A login link that was used or has expired: the login page, saying so.", 401),
    },
)
def login_page(
    request: Request, next: str = Query("/", max_length=2000), code: str | None = Query(None, max_length=200)
) -> HTMLResponse:
    """A login link answers a page, not a redirect: its click comes from another site (the
    notebook), and Chromium withholds a SameSite=Strict cookie from every redirect of a
    cross-site navigation, even one the redirecting answer just set, so a redirect would land
    on the login form with the link used up. The page's own step to `next` is same-site."""
    auth = request.app.state.auth
    if code is None:
        return TEMPLATES.TemplateResponse(request, "login.html", {**_context(request, next), "error": None})
    if not auth.redeem_login_link(code):
        return TEMPLATES.TemplateResponse(
            request,
            "login.html",
            {
                **_context(request, next),
                "error": "This login link was used already or has expired. Ask for a new one "
                "(in Colab: run the dashboard cell again), or paste the token.",
            },
            status_code=401,
        )
    response = TEMPLATES.TemplateResponse(request, "logged_in.html", {"next": _safe_next(next)})
    auth.start_session(request, response)
    return response


@router.post(
    "/login",
    response_model=None,
    response_class=HTMLResponse,
    responses={
        303: {"description": "Logged in: a redirect to `next`, with the session and CSRF cookies."},
        **body("text/html", "Wrong token: the login page again.", 401),
        **body("text/html", "Too many wrong tokens lately: the login page again.", 429),
    },
)
def login(
    request: Request, token: str = Form("", max_length=1000), next: str = Form("/", max_length=2000)
) -> HTMLResponse | RedirectResponse:
    """A correct token always gets in, however many wrong ones came first (see app.auth)."""
    auth = request.app.state.auth
    client = request.client.host if request.client else "unknown"
    context = _context(request, next)
    if not auth.token_ok(token.strip()):
        if auth.login_blocked(client):
            return TEMPLATES.TemplateResponse(
                request, "login.html", {**context, "error": "Too many failed attempts; wait a minute."}, status_code=429
            )
        auth.login_failed(client)
        return TEMPLATES.TemplateResponse(request, "login.html", {**context, "error": "Wrong token."}, status_code=401)
    auth.login_succeeded(client)
    response = RedirectResponse(url(request, _safe_next(next)), status_code=303)
    auth.start_session(request, response)
    return response


@router.post(
    "/logout",
    dependencies=[Depends(require_page)],
    status_code=303,
    response_class=RedirectResponse,
    responses={303: {"description": "Logged out (or never logged in): a redirect to /login."}, **problems(403)},
)
def logout(request: Request) -> RedirectResponse:
    response = RedirectResponse(url(request, "/login"), status_code=303)
    request.app.state.auth.end_session(request, response)
    return response
