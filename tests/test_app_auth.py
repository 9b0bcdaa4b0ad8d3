"""Authentication: every route is covered, browser sessions, CSRF, login throttling."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute, Mount

from app.main import create_app
from app.settings import settings_from_env

# The only routes reachable without credentials. Adding a route without auth fails
# test_every_route_needs_credentials unless it is listed here on purpose.
PUBLIC = {("GET", "/healthz"), ("GET", "/login"), ("POST", "/login")}
PUBLIC_MOUNTS = {"/static", "/vendor/swagger-ui"}


@pytest.fixture
def anon(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), follow_redirects=False) as c:
        yield c


def _login(client: TestClient, token: str) -> None:
    r = client.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text


def _all_routes(routes: list) -> Iterator[BaseRoute]:
    """Routes of the app, descending into included routers (FastAPI may keep them nested)."""
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            assert not getattr(getattr(route, "include_context", None), "prefix", ""), (
                "give routers their prefix in APIRouter(prefix=...), so route.path is complete"
            )
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
        assert route.methods is not None, route
        path = re.sub(r"\{[^}]+\}", "1", route.path)
        for method in route.methods:
            if (method, route.path) in PUBLIC:
                continue
            r = anon.request(method, path)
            if route.path.startswith("/api/"):
                assert r.status_code == 401, (method, route.path, r.status_code)
                assert r.json()["detail"]
            else:
                assert r.status_code == 303 and r.headers["location"].startswith("/login"), (
                    method,
                    route.path,
                    r.status_code,
                )
            wrong = anon.request(method, path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code in (401, 303), (method, route.path)
            checked += 1
    assert checked >= 20


def test_public_routes(anon) -> None:
    assert anon.get("/healthz").status_code == 200
    assert anon.get("/login").status_code == 200
    assert anon.get("/static/style.css").status_code == 200
    assert anon.get("/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200


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
    sid = anon.cookies["session"]
    anon.cookies.clear()
    assert anon.get("/api/runs", headers={"Cookie": f"session={sid}"}).status_code == 200
    assert anon.get("/api/runs", headers={"Cookie": f"session={sid}x"}).status_code == 401
    assert anon.get("/api/runs", headers={"Cookie": f"session={sid[:-1]}"}).status_code == 401
    assert anon.get("/api/runs", headers={"Cookie": "session=" + "a" * 5000}).status_code == 401


def test_logout_revokes_the_session_on_the_server(anon, settings) -> None:
    """A cookie copied before logout (from a shared machine, a proxy log) is dead after it."""
    _login(anon, settings.token)
    stolen = {"session": anon.cookies["session"], "csrf": anon.cookies["csrf"]}
    thief = TestClient(anon.app, cookies=stolen, follow_redirects=False)
    assert thief.get("/api/runs").status_code == 200
    assert anon.post("/logout", data={"csrf": anon.cookies["csrf"]}).status_code == 303
    assert thief.get("/api/runs").status_code == 401
    assert thief.get("/").status_code == 303
    r = thief.post("/api/runs", json={"task": "hopper-medium-v2"}, headers={"X-CSRF-Token": stolen["csrf"]})
    assert r.status_code == 401


def test_a_new_token_logs_every_browser_out(tmp_path, settings) -> None:
    with TestClient(create_app(settings), follow_redirects=False) as first:
        _login(first, settings.token)
        cookie = first.cookies["session"]
        assert first.get("/api/runs").status_code == 200
    rotated = settings.with_(token=settings.token + "-new")
    with TestClient(create_app(rotated), follow_redirects=False, cookies={"session": cookie}) as later:
        assert later.get("/api/runs").status_code == 401
    # the old sessions are gone from the database, not merely refused
    with TestClient(create_app(settings), follow_redirects=False, cookies={"session": cookie}) as back:
        assert back.get("/api/runs").status_code == 401


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


def test_failed_logins_are_rate_limited_per_client_but_the_right_token_gets_in(anon, settings) -> None:
    for _ in range(settings.login_failures_per_minute):
        assert anon.post("/login", data={"token": "wrong"}).status_code == 401
    assert anon.post("/login", data={"token": "wrong"}).status_code == 429
    assert anon.post("/login", data={"token": settings.token}).status_code == 303


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


def test_forged_forwarded_addresses_cannot_lock_the_owner_out(live_server) -> None:
    """A real uvicorn, as `dlite up` runs it: X-Forwarded-For is not believed (no trusted
    proxy is configured), so rotating it does not make one client many, and the global cap
    that many wrong logins trip still lets the right token in."""
    with httpx.Client(base_url=live_server.url, follow_redirects=False) as c:
        codes = [
            c.post("/login", data={"token": "wrong"}, headers={"X-Forwarded-For": f"10.0.{i}.1"}).status_code
            for i in range(30)
        ]
        assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}, codes
        r = c.post("/login", data={"token": live_server.token}, headers={"X-Forwarded-For": "10.9.9.9"})
        assert r.status_code == 303 and c.get("/api/runs").status_code == 200


def test_login_page_names_where_the_token_is(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DLITE_TOKEN", raising=False)
    from_file = settings_from_env(tmp_path / "data")
    with TestClient(create_app(from_file)) as c:
        assert f"it is in the file {tmp_path.resolve() / 'data' / 'token'}" in c.get("/login").text
    monkeypatch.setenv("DLITE_TOKEN", "t" * 32)
    with TestClient(create_app(settings_from_env(tmp_path / "data"))) as c:
        assert "it is in the DLITE_TOKEN environment variable" in c.get("/login").text


def _goes_on_to(page: httpx.Response) -> str:
    """Where a login link's page sends the browser: its refresh, and the link for a browser without one."""
    [refresh] = re.findall(r'<meta http-equiv="refresh" content="0; url=([^"]*)">', page.text)
    [continue_] = re.findall(r'<a href="([^"]*)" id="continue">', page.text)
    assert refresh == continue_, (refresh, continue_)
    return refresh


def test_a_login_link_opens_one_session_once_and_never_shows_the_token(settings) -> None:
    with TestClient(create_app(settings), follow_redirects=False) as c:
        headers = {"Authorization": f"Bearer {settings.token}"}
        made = c.post("/api/login-links", params={"next": "/results"}, headers=headers)
        assert made.status_code == 201 and settings.token not in made.text
        link = made.json()["path"]
        assert link.startswith("/login?code=") and made.json()["expires_at"] > 0
        r = c.get(link)
        assert r.status_code == 200 and _goes_on_to(r) == "/results" and "session" in r.cookies
        assert c.get("/").status_code == 200, "the session it opened works"
        c.cookies.clear()
        again = c.get(link)
        assert again.status_code == 401 and "used already or has expired" in again.text
        assert c.get("/").status_code == 303, "no session from a used link"
        assert c.get("/login", params={"code": "guessed"}).status_code == 401
        off_site = c.post("/api/login-links", params={"next": "//evil.example"}, headers=headers).json()["path"]
        assert _goes_on_to(c.get(off_site)) == "/"


def test_login_links_expire_and_are_bounded(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from app import auth as auth_module

    with TestClient(create_app(settings), follow_redirects=False) as c:
        auth = c.app.state.auth
        codes = [auth.issue_login_link() for _ in range(auth_module.MAX_LOGIN_LINKS + 5)]
        assert len(auth._links) == auth_module.MAX_LOGIN_LINKS
        assert not auth.redeem_login_link(codes[0]), "the oldest were forgotten"
        clock = auth_module.time.monotonic() + auth_module.LOGIN_LINK_SECONDS + 1
        monkeypatch.setattr(auth_module.time, "monotonic", lambda: clock)
        assert not auth.redeem_login_link(codes[-1]), "past its time"
        assert c.post("/api/login-links").status_code == 401, "only a token holder makes links"
