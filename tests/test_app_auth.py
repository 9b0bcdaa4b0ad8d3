"""Authentication: every route is covered, browser sessions, CSRF, login throttling."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount

from app.main import create_app


# The only routes reachable without credentials. Adding a route without auth fails
# test_every_route_needs_credentials unless it is listed here on purpose.
PUBLIC = {("GET", "/healthz"), ("GET", "/login"), ("POST", "/login")}
PUBLIC_MOUNTS = {"/static"}


@pytest.fixture
def anon(settings) -> TestClient:
    with TestClient(create_app(settings), follow_redirects=False) as c:
        yield c


def _login(client: TestClient, token: str) -> None:
    r = client.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text


def _all_routes(routes: list) -> Iterator[object]:
    """Routes of the app, descending into included routers (FastAPI may keep them nested)."""
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            assert not getattr(getattr(route, "include_context", None), "prefix", ""), \
                "give routers their prefix in APIRouter(prefix=...), so route.path is complete"
            yield from _all_routes(nested.routes)
        else:
            yield route


def test_every_route_needs_credentials(anon) -> None:
    checked = 0
    for route in _all_routes(anon.app.routes):
        if isinstance(route, Mount):
            assert route.path in PUBLIC_MOUNTS, f"unexpected mount {route.path}"
            continue
        assert isinstance(route, APIRoute), route
        path = re.sub(r"\{[^}]+\}", "1", route.path)
        for method in route.methods:
            if (method, route.path) in PUBLIC:
                continue
            r = anon.request(method, path)
            if route.path.startswith("/api/"):
                assert r.status_code == 401, (method, route.path, r.status_code)
                assert r.json()["detail"]
            else:
                assert r.status_code == 303 and r.headers["location"].startswith("/login"), \
                    (method, route.path, r.status_code)
            wrong = anon.request(method, path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code in (401, 303), (method, route.path)
            checked += 1
    assert checked >= 20


def test_public_routes(anon) -> None:
    assert anon.get("/healthz").status_code == 200
    assert anon.get("/login").status_code == 200
    assert anon.get("/static/style.css").status_code == 200


def test_browser_without_session_is_sent_to_login(anon) -> None:
    r = anon.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/"


def test_login_sets_strict_httponly_session_and_readable_csrf(anon, settings) -> None:
    r = anon.post("/login", data={"token": settings.token, "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookies = {c.split("=", 1)[0]: c for c in r.headers.get_list("set-cookie")}
    session, csrf = cookies["session"], cookies["csrf"]
    for cookie in (session, csrf):
        assert "SameSite=strict" in cookie and "Path=/" in cookie
    assert "HttpOnly" in session and "HttpOnly" not in csrf
    assert settings.token not in session
    assert anon.get("/").status_code == 200
    assert anon.get("/api/runs").status_code == 200


def test_bad_session_cookie_is_refused(anon, settings) -> None:
    _login(anon, settings.token)
    sid, issued, sig = anon.cookies["session"].split(".")
    anon.cookies.clear()
    assert anon.get("/api/runs", headers={"Cookie": f"session={sid}.{issued}.{sig}"}).status_code == 200
    assert anon.get("/api/runs", headers={"Cookie": f"session={sid}x.{issued}.{sig}"}).status_code == 401
    assert anon.get("/api/runs", headers={"Cookie": f"session={sid}.{int(issued) + 1}.{sig}"}).status_code == 401


def test_cookie_posts_need_csrf_but_bearer_posts_do_not(anon, settings) -> None:
    _login(anon, settings.token)
    body = {"task": "hopper-medium-v2", "config": {}}
    assert anon.post("/api/runs", json=body).status_code == 403
    assert anon.post("/api/runs", json=body, headers={"X-CSRF-Token": "forged"}).status_code == 403
    csrf = anon.cookies["csrf"]
    assert anon.post("/api/runs", json=body, headers={"X-CSRF-Token": csrf}).status_code == 201
    bearer = TestClient(anon.app, headers={"Authorization": f"Bearer {settings.token}"})
    assert bearer.post("/api/runs", json=body).status_code == 201
    # A form post (logout) may carry the token as a form field instead of the header.
    assert anon.post("/logout", data={"csrf": "forged"}).status_code == 403
    r = anon.post("/logout", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_failed_logins_are_rate_limited_per_client(anon, settings) -> None:
    for _ in range(settings.login_failures_per_minute):
        assert anon.post("/login", data={"token": "wrong"}).status_code == 401
    assert anon.post("/login", data={"token": "wrong"}).status_code == 429
    assert anon.post("/login", data={"token": settings.token}).status_code == 429


def test_failed_logins_are_capped_across_forged_client_addresses(settings) -> None:
    """Forwarded-for headers can be forged behind a tunnel: all clients together are capped too."""
    with TestClient(create_app(settings), follow_redirects=False) as c:
        auth = c.app.state.auth
        for i in range(6 * settings.login_failures_per_minute):
            assert not auth.login_blocked(f"10.0.0.{i}")
            auth.login_failed(f"10.0.0.{i}")
        assert auth.login_blocked("10.9.9.9"), "a fresh address is refused once the global cap is hit"


def test_non_ascii_cookies_are_refused_not_crashed(anon, settings) -> None:
    forged = "session=abc.123.\u00e9t\u00e9".encode("latin-1")
    assert anon.get("/api/runs", headers={"Cookie": forged}).status_code == 401
    _login(anon, settings.token)
    r = anon.post("/api/runs", json={"task": "hopper-medium-v2"}, headers={"X-CSRF-Token": "\u00e9".encode("latin-1")})
    assert r.status_code == 403


def test_login_next_stays_on_site(anon, settings) -> None:
    r = anon.post("/login", data={"token": settings.token, "next": "//evil.example/"})
    assert r.headers["location"] == "/"
