"""The dashboard at the root or under a path prefix (DLITE_ROOT_PATH), reached through a
proxy that strips the prefix or forwards the full path: every URL a page hands out is
root-relative and carries the prefix and resolves, redirects keep to the site, and the
cookies' Path, Secure, SameSite and Partitioned follow the rules of app.auth. The same
through a real proxy and chromium: tests/test_proxy_browser.py."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route, WebSocketRoute

from app.main import create_app
from app.settings import APP_SEGMENTS, settings_from_env
from tests.app_helpers import app_of, create_run, make_settings, register, start_server, stop_server
from tests.test_app_auth import _all_routes
from tests.test_dashboard_pages import _running_run
from tests.test_multi_run_api import final, finish, run_next, sweep

if TYPE_CHECKING:
    import httpx2  # what starlette's TestClient answers with

URL_ATTRIBUTE = re.compile(r'\s(href|src|action|data-[a-z-]+)="([^"]*)"')
FETCHED = {"href", "src", "data-refresh", "data-url", "data-then"}
"""Attributes a browser GETs (forms, data-post and event streams are exercised elsewhere)."""
FORMS = [("", "full"), ("/lab", "full"), ("/lab", "stripped")]
"""(prefix, how the proxy forwards it): the full path, or the path with the prefix stripped."""


class Proxy:
    """A TestClient reached as the browser sees it (`get("/lab/runs/1")`), forwarding what a
    proxy of the given kind would send on."""

    def __init__(self, client: TestClient, root: str, form: str) -> None:
        self.client, self.root, self.form = client, root, form

    def request(self, method: str, url: str, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx2.Response:
        assert url.startswith(self.root + "/") or url == self.root, url
        if self.form == "full":
            return self.client.request(method, url, headers=headers, **kwargs)
        # the browser sent the cookies of the path it asked for, before the proxy stripped it
        jar = "; ".join(f"{c.name}={c.value}" for c in self.client.cookies.jar)
        return self.client.request(
            method, url.removeprefix(self.root), headers={**(headers or {}), "Cookie": jar}, **kwargs
        )

    def get(self, url: str, **kwargs: Any) -> httpx2.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx2.Response:
        return self.request("POST", url, **kwargs)


@pytest.fixture(params=FORMS, ids=[f"{root or 'root'}-{form}" for root, form in FORMS])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Proxy, TestClient]]:
    """The browser side through the proxy, and a bearer client straight to the server."""
    root, form = request.param
    settings = make_settings(tmp_path, root_path=root)
    app = create_app(settings)
    with (
        TestClient(app, follow_redirects=False) as browser,
        TestClient(app, headers={"Authorization": f"Bearer {settings.token}"}) as api,
    ):
        proxy = Proxy(browser, root, form)
        r = proxy.post(f"{root}/login", data={"token": settings.token, "next": "/"})
        assert r.status_code == 303 and r.headers["location"] == f"{root}/"
        yield proxy, api


def _fill(api: TestClient, root: str) -> dict[str, int]:
    """A running run with figures and a tag, a sweep whose run finished with a score."""
    rid, _ = _running_run(api)
    api.patch(f"/api/runs/{rid}", json={"tags": ["baseline"]}).raise_for_status()
    files = api.post(f"/api/runs/{rid}/figures").json()["files"]
    assert files and all(f["url"] == f"{root}/api/runs/{rid}/figures/{f['name']}" for f in files)
    sid = sweep(api, ["hopper-medium-v2"], [0])["id"]
    done, attempt = run_next(api, register(api))
    final(api, done, attempt, [90.0, 92.0])
    finish(api, done, attempt)
    return {"run": rid, "sweep": sid, "done": done}


def _urls(text: str) -> list[tuple[str, str]]:
    """(attribute, value) of every attribute whose value is a URL path or an absolute URL."""
    return [
        (a, html.unescape(v))
        for a, v in URL_ATTRIBUTE.findall(text)
        if a != "data-root" and (v.startswith("/") or "://" in v)
    ]


def test_every_page_links_root_relative_urls_under_the_prefix_and_they_resolve(lab) -> None:
    proxy, api = lab
    root = proxy.root
    ids = _fill(api, root)
    pages = [
        "/",
        "/runs/new",
        f"/runs/new?from={ids['run']}",
        "/runs/table",
        f"/runs/{ids['run']}",
        f"/runs/{ids['run']}/panels",
        "/sweeps",
        f"/sweeps/{ids['sweep']}",
        f"/sweeps/{ids['sweep']}/progress",
        "/results",
        f"/compare?runs={ids['run']},{ids['done']}",
        "/runs/999",
        "/login",
    ]
    fetched: set[str] = set()
    for page in pages:
        r = proxy.get(root + page)
        assert r.status_code == (404 if page == "/runs/999" else 200), page
        assert "http://" not in r.text and "://testserver" not in r.text, page
        for attribute, value in _urls(r.text):
            assert value.startswith(f"{root}/") and not value.startswith("//"), (page, attribute, value)
            if attribute in FETCHED:
                fetched.add(value)
        if r.text.startswith("<!doctype"):  # a whole page, not a fragment: the prefix for the scripts
            assert f'<html lang="en" data-root="{root}">' in r.text, page
    assert len(fetched) > 30
    for value in sorted(fetched):
        assert proxy.get(value).status_code == 200, value


def test_docs_and_openapi_name_the_prefix(lab) -> None:
    proxy, _ = lab
    assert f"'{proxy.root}/api/openapi.json'" in proxy.get(f"{proxy.root}/docs").text
    servers = proxy.get(f"{proxy.root}/api/openapi.json").json().get("servers")
    assert servers == ([{"url": proxy.root}] if proxy.root else None)


def test_docs_load_swagger_ui_from_this_server_under_the_prefix(lab) -> None:
    """Offline, and nothing leaves the machine: every URL the page names is the server's own,
    and its assets are served, without a session, as what they are."""
    proxy, _ = lab
    page = proxy.get(f"{proxy.root}/docs").text
    urls = [v for _, v in URL_ATTRIBUTE.findall(page)] + re.findall(r"url: '([^']*)'", page)
    assert "://" not in page and "//" not in "".join(urls) and len(urls) == 4, urls
    assert all(u.startswith(f"{proxy.root}/") for u in urls), urls
    anon = Proxy(TestClient(proxy.client.app, follow_redirects=False), proxy.root, proxy.form)
    kinds = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}
    assert {u.rsplit("/", 1)[1] for u in urls} == {*kinds, "openapi.json"}
    for name, kind in kinds.items():
        r = anon.get(f"{proxy.root}/vendor/swagger-ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].split(";")[0] == kind, name
    assert anon.get(f"{proxy.root}/docs").status_code == 303  # the page itself still wants the login
    assert anon.get(f"{proxy.root}/api/openapi.json").status_code == 401


def test_redirects_keep_the_prefix_and_the_page_asked_for(lab) -> None:
    proxy, _ = lab
    root = proxy.root
    anon = Proxy(TestClient(proxy.client.app, follow_redirects=False), root, proxy.form)
    r = anon.get(f"{root}/compare?runs=1,2")
    assert r.status_code == 303 and r.headers["location"] == f"{root}/login?next=/compare%3Fruns%3D1%2C2"
    login = anon.get(r.headers["location"])
    assert 'name="next" value="/compare?runs=1,2"' in login.text
    token = app_of(proxy.client).state.settings.token
    r = anon.post(f"{root}/login", data={"token": token, "next": "/compare?runs=1,2"})
    assert r.headers["location"] == f"{root}/compare?runs=1,2"
    cookies = r.headers.get_list("set-cookie")
    assert len(cookies) == 2 and all(f"Path={root or '/'};" in c for c in cookies)
    r = anon.post(f"{root}/logout", data={"csrf": anon.client.cookies["csrf"]})
    assert r.status_code == 303 and r.headers["location"] == f"{root}/login"
    assert all(f"Path={root or '/'};" in c and "Max-Age=0" in c for c in r.headers.get_list("set-cookie"))
    if root:
        r = anon.client.get(root)  # the bare prefix, as a proxy forwarding the full path sends it
        assert r.status_code == 307 and r.headers["location"] == f"{root}/"


@pytest.mark.parametrize(
    "next_",
    [
        "//evil.example/",
        "/\\evil.example",
        "https://evil.example/",
        "evil.example",
        "/\t/evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "",
    ],
)
def test_next_cannot_leave_the_site(lab, next_: str) -> None:
    proxy, _ = lab
    r = proxy.post(f"{proxy.root}/login", data={"token": app_of(proxy.client).state.settings.token, "next": next_})
    location = r.headers["location"]
    assert location.startswith(f"{proxy.root}/") and not location.startswith(("//", "/\\")), location
    assert urlsplit(urljoin("https://lab.example/x/login", location)).netloc == "lab.example", location


def test_api_errors_stay_json_and_pages_html_under_the_prefix(lab) -> None:
    proxy, _ = lab
    root = proxy.root
    r = proxy.get(f"{root}/api/no-such-thing")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    r = proxy.get(f"{root}/runs/abc")
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]
    assert f"There is no page at {root}/runs/abc" in r.text
    r = proxy.request("PUT", f"{root}/login")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"


def _cookies(r: httpx.Response | httpx2.Response) -> list[str]:
    cookies = r.headers.get_list("set-cookie")
    assert [c.split("=", 1)[0] for c in cookies] == ["session", "csrf"], cookies
    return cookies


def _login(client: TestClient, **headers: str) -> list[str]:
    r = client.post("/login", data={"token": app_of(client).state.settings.token}, headers=headers)
    assert r.status_code == 303
    return _cookies(r)


def test_secure_only_for_https_as_the_server_sees_it_or_when_told(settings) -> None:
    """A client's own X-Forwarded-Proto is not believed; the scheme uvicorn hands the app is
    (from DLITE_TRUSTED_PROXIES only: test_a_trusted_proxys_https_makes_cookies_secure)."""
    with TestClient(create_app(settings), follow_redirects=False) as plain:
        assert not any("Secure" in c for c in _login(plain, **{"X-Forwarded-Proto": "https"}))
    with TestClient(create_app(settings), base_url="https://testserver", follow_redirects=False) as tls:
        assert all("Secure" in c for c in _login(tls))
    with TestClient(create_app(settings.with_(secure_cookies=True)), follow_redirects=False) as told:
        assert all("Secure" in c and "SameSite=strict" in c for c in _login(told))


def test_a_trusted_proxys_https_makes_cookies_secure(tmp_path) -> None:
    """Real uvicorn, as `dlite up` runs it: its proxy_headers believe X-Forwarded-Proto only
    from DLITE_TRUSTED_PROXIES."""
    for trusted, secure in (("127.0.0.1", True), ("", False)):
        server = start_server(tmp_path / (trusted or "none"), DLITE_TRUSTED_PROXIES=trusted)
        try:
            r = httpx.post(f"{server.url}/login", data={"token": server.token}, headers={"X-Forwarded-Proto": "https"})
            assert r.status_code == 303
            assert all(("Secure" in c) is secure for c in _cookies(r)), (trusted, r.headers)
        finally:
            stop_server(server)


def test_a_login_inside_an_iframe_gets_cookies_a_framed_page_is_sent(settings) -> None:
    """Colab frames the dashboard cross-site, where SameSite=Strict cookies are never sent."""
    with TestClient(
        create_app(settings.with_(root_path="/lab")), base_url="https://testserver", follow_redirects=False
    ) as c:  # https: the client keeps Secure cookies
        assert " autofocus" not in c.get("/lab/login", headers={"Sec-Fetch-Dest": "iframe"}).text
        assert " autofocus" in c.get("/lab/login").text
        for cookie in _login(c, **{"Sec-Fetch-Dest": "iframe"}):
            assert cookie.endswith("; Path=/lab; SameSite=none; Secure; Partitioned"), cookie
        r = c.post("/lab/logout", data={"csrf": c.cookies["csrf"]}, headers={"Sec-Fetch-Dest": "iframe"})
        assert all("Max-Age=0" in k and k.endswith("Secure; Partitioned") for k in _cookies(r))
        for cookie in _login(c, **{"Sec-Fetch-Dest": "document"}):
            assert "SameSite=strict" in cookie and "Partitioned" not in cookie
        headers = c.get("/lab/").headers
        assert "x-frame-options" not in headers and "content-security-policy" not in headers


@pytest.mark.parametrize("value, expected", [("", ""), ("/lab", "/lab"), (" /tools/lab-2 ", "/tools/lab-2")])
def test_root_path_setting(tmp_path, monkeypatch, value: str, expected: str) -> None:
    monkeypatch.setenv("DLITE_TOKEN", "t" * 32)
    monkeypatch.setenv("DLITE_ROOT_PATH", value)
    assert settings_from_env(tmp_path).root_path == expected


@pytest.mark.parametrize(
    "value, says",
    [
        ("lab", "a leading /"),
        ("/lab/", "no trailing /"),
        ("/a//b", "//"),
        ("/a b", "letters, digits"),
        ("/a/../b", "not a path prefix"),
        ("/lab?x", "not a path prefix"),
        ("/api", "one of the dashboard's own"),
        ("/runs/x", "pick another prefix, e.g. /lab"),
    ],
)
def test_a_bad_root_path_stops_the_server_saying_what_to_write(tmp_path, monkeypatch, value: str, says: str) -> None:
    monkeypatch.setenv("DLITE_TOKEN", "t" * 32)
    monkeypatch.setenv("DLITE_ROOT_PATH", value)
    with pytest.raises(SystemExit, match=re.escape(says)):
        settings_from_env(tmp_path)


@pytest.mark.parametrize("value, expected", [("", False), ("0", False), ("1", True), ("True", True), ("yes", True)])
def test_secure_cookies_setting(tmp_path, monkeypatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("DLITE_TOKEN", "t" * 32)
    monkeypatch.setenv("DLITE_SECURE_COOKIES", value)
    assert settings_from_env(tmp_path).secure_cookies is expected
    monkeypatch.setenv("DLITE_SECURE_COOKIES", "sometimes")
    with pytest.raises(SystemExit, match="set it to 1 or 0"):
        settings_from_env(tmp_path)


def test_reserved_prefixes_are_the_apps_own_first_segments(settings) -> None:
    app = create_app(settings)
    segments = set()
    for route in _all_routes(app.routes):
        assert isinstance(route, (Route, Mount, WebSocketRoute)), route  # the routes that have a path
        segments.add(route.path.split("/")[1])
    assert segments - {""} == APP_SEGMENTS


def test_pages_work_without_the_prefix_too(tmp_path) -> None:
    """Straight to the server (a worker, a local browser), the app paths answer as before."""
    settings = make_settings(tmp_path, root_path="/lab")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {settings.token}"}) as c:
        rid = create_run(c)["id"]
        assert c.get(f"/api/runs/{rid}").status_code == 200 and c.get("/healthz").status_code == 200
        assert c.get("/static/style.css").status_code == 200
