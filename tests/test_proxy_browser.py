"""The dashboard behind a real TLS-terminating reverse proxy (Debian's caddy), as cloudflared,
ngrok or Colab's port proxy put it: chromium opens the https address and must get a styled
page, charts, live updates over server-sent events, downloads and logout, with no mixed
content and no request that leaves the proxy, whether the proxy forwards Host or rewrites
it, sends X-Forwarded-* or not, and serves the dashboard at the root or under /lab (the
prefix stripped or forwarded). Inside a cross-site iframe (Colab's output frame), logging
in must stick, and a login link clicked on another site (Colab's printed one) must log in."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.app_helpers import LiveServer, free_port, start_server, stop_server
from tests.test_dashboard_browser import _points, _seed

pytestmark = pytest.mark.browser
HEADER_GREY = "rgb(243, 244, 246)"  # style.css's header background
FORWARDED = ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"]


@dataclass(frozen=True)
class Setup:
    name: str
    root: str = ""
    strip: bool = False
    """The proxy removes the prefix before forwarding (else it forwards the full path)."""
    rewrite_host: bool = False
    """Host becomes the server's own address and no X-Forwarded-* header is sent."""
    trusted: bool = False
    """The server believes the proxy's X-Forwarded-Proto (DLITE_TRUSTED_PROXIES), so its cookies are Secure."""


SETUPS = [
    Setup("host-as-sent", trusted=True),
    Setup("host-rewritten", rewrite_host=True),
    Setup("prefix-stripped", root="/lab", strip=True, trusted=True),
    Setup("prefix-forwarded", root="/lab"),
]


def _binary(name: str) -> str:
    """Skipped only on a developer machine without it; CI installs it (scripts/test.sh)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is missing: apt-get install -y {name} (scripts/test.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throw-away self-signed certificate for localhost and 127.0.0.1 (two sites)."""
    openssl, folder = _binary("openssl"), tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Starts dashboard servers (uvicorn, as `dlite up` runs it) and stops them at the end."""
    started: list[LiveServer] = []

    def start(**settings: str) -> LiveServer:
        # the defaults spelled out, so the type checker sees `settings` only as environment variables
        started.append(start_server(tmp_path / f"data{len(started)}", None, 60, **settings))
        return started[-1]

    yield start
    for server in started:
        stop_server(server)


@pytest.fixture
def caddy(tmp_path: Path, certificate: tuple[Path, Path]) -> Iterator[Callable[[dict], None]]:
    """Starts caddy with the given HTTPS servers (name -> {port, routes}) and stops it at the end."""
    binary = _binary("caddy")
    procs: list[subprocess.Popen] = []

    def start(servers: dict) -> None:
        cert, key = certificate
        config = {
            "admin": {"disabled": True},
            "logging": {"logs": {"default": {"level": "ERROR"}}},
            "apps": {
                "tls": {"certificates": {"load_files": [{"certificate": str(cert), "key": str(key)}]}},
                "http": {
                    "servers": {
                        name: {
                            "listen": [f"127.0.0.1:{s['port']}"],
                            "routes": s["routes"],
                            "tls_connection_policies": [{}],
                            "automatic_https": {"disable": True},
                        }
                        for name, s in servers.items()
                    }
                },
            },
        }
        path, log = tmp_path / f"caddy{len(procs)}.json", tmp_path / f"caddy{len(procs)}.log"
        path.write_text(json.dumps(config))
        home = {"XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}  # caddy's state, thrown away
        with log.open("w") as out:
            procs.append(
                subprocess.Popen(
                    [binary, "run", "--config", str(path)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **home},
                )
            )
        for s in servers.values():
            _wait_for_port(s["port"], procs[-1], log)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"caddy exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"caddy did not listen on {port}: {log.read_text()}")


def _proxy_routes(setup: Setup, upstream: LiveServer) -> list[dict]:
    """caddy's routes for `setup`; under a prefix anything outside it is the proxy's 404, so a
    link that lost the prefix shows up as a failed request."""
    hostport = upstream.url.removeprefix("http://")
    proxy: dict = {"handler": "reverse_proxy", "upstreams": [{"dial": hostport}]}
    if setup.rewrite_host:
        proxy["headers"] = {"request": {"set": {"Host": [hostport]}, "delete": FORWARDED}}
    if not setup.root:
        return [{"handle": [proxy]}]
    strip = [{"handler": "rewrite", "strip_path_prefix": setup.root}] if setup.strip else []
    return [
        {"match": [{"path": [setup.root, f"{setup.root}/*"]}], "handle": [*strip, proxy]},
        {"handle": [{"handler": "static_response", "status_code": 404, "body": "not under the prefix"}]},
    ]


def _watch(page, *origins: str) -> list[str]:
    """Everything that would show a broken page: console errors and warnings (mixed content
    among them), script errors, failed or refused requests, and any request to another origin."""
    problems: list[str] = []

    def console(m) -> None:
        if m.type in ("error", "warning"):
            problems.append(f"console {m.type}: {m.text} ({m.location.get('url')})")

    def request(r) -> None:
        if not r.url.startswith(tuple(f"{o}/" for o in origins)):
            problems.append(f"request outside {origins}: {r.url}")

    def response(r) -> None:
        if r.status >= 400:
            problems.append(f"HTTP {r.status}: {r.url}")

    def request_failed(r) -> None:
        # leaving a page cancels its event stream; that is not a failure
        if not (r.failure == "net::ERR_ABORTED" and "/stream" in r.url):
            problems.append(f"request failed ({r.failure}): {r.url}")

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    page.on("request", request)
    page.on("response", response)
    page.on("requestfailed", request_failed)
    return problems


@pytest.mark.parametrize("setup", SETUPS, ids=[s.name for s in SETUPS])
def test_dashboard_behind_an_https_proxy(browser, lab, caddy, setup: Setup) -> None:
    env = {"DLITE_ROOT_PATH": setup.root} | ({"DLITE_TRUSTED_PROXIES": "127.0.0.1"} if setup.trusted else {})
    server = lab(**env)
    port = free_port()
    caddy({"proxy": {"port": port, "routes": _proxy_routes(setup, server)}})
    base, root = f"https://127.0.0.1:{port}", setup.root
    with server.client() as api:
        rid, attempt = _seed(api)
        context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        problems = _watch(page, base)

        page.goto(f"{base}{root}/")
        assert page.url == f"{base}{root}/login?next=/"
        assert page.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor") == HEADER_GREY
        page.fill("input[name=token]", server.token)
        page.click("button[type=submit]")
        page.wait_for_selector("table.runs")
        assert page.url == f"{base}{root}/"
        cookies = {c["name"]: c for c in context.cookies()}
        assert {(c["path"], c["secure"], c["sameSite"]) for c in cookies.values()} == {
            (root or "/", setup.trusted, "Strict")
        }, cookies

        page.click(f"a[href='{root}/runs/{rid}']")
        page.wait_for_function("""() => ['loss', 'score'].every(id => {
            const d = document.getElementById('chart-' + id).data;
            return d && d.length && d.every(t => t.x.length === 50); })""")
        assert page.text_content("#charts-status") == ""
        api.post(f"/api/runs/{rid}/metrics", json={"attempt": attempt, "points": _points(50, 60)}).raise_for_status()
        page.wait_for_function("document.getElementById('chart-loss').data.every(t => t.x.length === 60)")

        csv = page.get_attribute("a[href$='/charts/loss.csv']", "href")
        assert csv == f"{root}/api/runs/{rid}/charts/loss.csv"
        download = page.request.get(base + csv)
        assert download.status == 200 and download.headers["content-type"].startswith("text/csv")
        header, *rows = download.text().splitlines()
        assert "step" in header.split(",") and len(rows) == 3 * 60, header

        page.click("form.logout button")
        page.wait_for_url(f"{base}{root}/login")
        page.goto(f"{base}{root}/runs/{rid}")
        assert page.url == f"{base}{root}/login?next=/runs/{rid}"
        context.close()
    assert problems == [], "\n".join(problems)


def _other_site(port: int, body: str) -> dict:
    """caddy's server for a notebook page on https://localhost:`port`, a site other than the
    dashboard's https://127.0.0.1 (as colab.research.google.com is to the port proxy)."""
    return {
        "port": port,
        "routes": [
            {
                "handle": [
                    {
                        "handler": "static_response",
                        "body": f"<!doctype html><title>notebook</title>{body}",
                        "headers": {"Content-Type": ["text/html; charset=utf-8"]},
                    }
                ]
            }
        ],
    }


@pytest.mark.parametrize("login", ["token", "link"])
def test_login_inside_a_cross_site_iframe_sticks(browser, lab, caddy, login: str) -> None:
    """A notebook page on https://localhost frames the dashboard on https://127.0.0.1 (another
    site), as Colab frames its port proxy: the login cookies, from the token form or from a
    login link as the frame's address (Colab's dashboard cell), must reach the frame's next pages."""
    server = lab(DLITE_ROOT_PATH="/lab")
    outer, port = free_port(), free_port()
    with server.client() as api:
        rid, _ = _seed(api)
        src = api.post("/api/login-links").json()["path"] if login == "link" else "/lab/"
        caddy(
            {
                "proxy": {"port": port, "routes": _proxy_routes(Setup("framed", root="/lab"), server)},
                "notebook": _other_site(
                    outer, f'<iframe src="https://127.0.0.1:{port}{src}" width="1200" height="900"></iframe>'
                ),
            }
        )
        context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        problems = _watch(page, f"https://localhost:{outer}", f"https://127.0.0.1:{port}")
        page.goto(f"https://localhost:{outer}/")
        frame = page.frame_locator("iframe")
        if login == "token":
            frame.locator("input[name=token]").fill(server.token)
            frame.locator("button[type=submit]").click()
        frame.locator("table.runs").wait_for()
        [dashboard] = page.main_frame.child_frames
        assert dashboard.url == f"https://127.0.0.1:{port}/lab/"
        cookies = {c["name"]: c for c in context.cookies()}
        assert {(c["path"], c["secure"], c["sameSite"]) for c in cookies.values()} == {("/lab", True, "None")}
        dashboard.wait_for_load_state("load")  # a click before its scripts arrive would abort their requests
        frame.locator(f"a[href='/lab/runs/{rid}']").click()
        dashboard.wait_for_function("(document.getElementById('chart-loss') || {}).data?.every(t => t.x.length === 50)")
        context.close()
    assert problems == [], "\n".join(problems)


def test_a_login_link_clicked_on_another_site_logs_in_once(browser, lab, caddy) -> None:
    """Colab prints a login link for a browser tab, clicked on colab.research.google.com: a
    navigation another site starts, whose redirects would not carry a SameSite=Strict cookie
    set on the way, so the link must log in and land on the runs page all the same."""
    server = lab(DLITE_ROOT_PATH="/lab")
    outer, port = free_port(), free_port()
    dashboard = f"https://127.0.0.1:{port}"
    with server.client() as api:
        link = dashboard + api.post("/api/login-links").json()["path"]
    caddy(
        {
            "proxy": {"port": port, "routes": _proxy_routes(Setup("linked", root="/lab"), server)},
            "notebook": _other_site(outer, f'<a href="{link}">Dashboard in a browser tab</a>'),
        }
    )
    for clicks in ("first", "again"):
        context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        problems = _watch(page, f"https://localhost:{outer}", dashboard)
        page.goto(f"https://localhost:{outer}/")
        page.click("a")
        if clicks == "first":
            page.wait_for_url(f"{dashboard}/lab/")
            page.locator("#runs-table").wait_for()
            assert page.locator("form.logout button").is_visible() and page.locator("input[name=token]").count() == 0
            assert [c["sameSite"] for c in context.cookies()] == ["Strict", "Strict"]
            assert problems == [], "\n".join(problems)
        else:
            page.locator("form.login p.error").wait_for()
            assert "used already or has expired" in page.text_content("form.login p.error") and page.url == link
            # the 401 is the only problem, though chromium reports it twice (the answer, and a console line)
            assert f"HTTP 401: {link}" in problems and [p for p in problems if link not in p] == [], problems
        context.close()
