"""Server fixtures (settings, client, browser_client, live_server, and the chromium `browser`;
registered as a pytest plugin by conftest.py) and helpers for tests that talk to a real server."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from app.main import create_app
from app.protocol import ClaimResponse
from app.settings import Settings
from worker.client import ServerClient

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's chromium through Playwright. Skipped only on a developer machine without
    chromium; in CI a missing one fails."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


def make_settings(tmp_path: Path, **changes: object) -> Settings:
    base = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'dlite.db'}",
        token=secrets.token_urlsafe(32),
        sse_poll_seconds=0.05,
        sse_keepalive_seconds=1.0,
        lease_sweep_seconds=0.2,
    )
    return base.with_(**changes)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def browser_client(settings: Settings) -> Iterator[TestClient]:
    """A logged-in browser: session cookie and CSRF cookie, no bearer header."""
    with TestClient(create_app(settings), follow_redirects=False) as c:
        assert c.post("/login", data={"token": settings.token, "next": "/"}).status_code == 303
        yield c


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throw-away database on the server DLITE_TEST_POSTGRES_URL points at."""
    base = os.environ.get("DLITE_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("DLITE_TEST_POSTGRES_URL is not set")
    name = f"dlite_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield admin.url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {settings.token}"}) as c:
        yield c


def app_of(client: TestClient) -> FastAPI:
    """The app a TestClient drives (TestClient types it as any ASGI app): its `state` holds db, settings, auth."""
    return cast(FastAPI, client.app)


def small_config(**overrides: object) -> dict[str, object]:
    """A tiny run, so totals are easy to read in assertions."""
    return {"diffusion_gradient_steps": 1000, "invdyn_gradient_steps": 1000, **overrides}


def create_run(
    client: TestClient | httpx.Client, task: str = "hopper-medium-v2", paper: bool = False, **config: object
) -> dict:
    """Queue a tiny run, or one at the paper's settings (`paper`) for what is compared with the paper."""
    r = client.post(
        "/api/runs", json={"task": task, "name": None, "config": config if paper else small_config(**config)}
    )
    assert r.status_code == 201, r.text
    return r.json()


def register(client: TestClient | httpx.Client, name: str = "w") -> str:
    r = client.post("/api/workers/register", json={"name": name, "host": "h", "device": "cpu", "gpu_name": None})
    assert r.status_code == 200, r.text
    return r.json()["worker_id"]


def claim(client: TestClient | httpx.Client, worker_id: str) -> dict | None:
    r = client.post(f"/api/workers/{worker_id}/claim")
    assert r.status_code in (200, 204), r.text
    return r.json() if r.status_code == 200 else None


def claim_run(client: TestClient | httpx.Client, worker_id: str) -> dict:
    """`claim` where the test expects a run to be handed out: fails if none is."""
    got = claim(client, worker_id)
    assert got is not None, "no run was claimed"
    return got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class LiveServer:
    url: str
    token: str
    process: subprocess.Popen

    def client(self, timeout: float | httpx.Timeout = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=timeout)


def start_server(
    data_dir: Path, database_url: str | None = None, lease_seconds: float = 60, **settings: str
) -> LiveServer:
    """A real uvicorn process, as in production (`python -m app.server`); `settings` are
    more environment variables for it (DLITE_ROOT_PATH=...)."""
    port, token = free_port(), secrets.token_urlsafe(32)
    env = subprocess_env(DLITE_TOKEN=token, DLITE_LEASE_SECONDS=str(lease_seconds), **settings)
    if database_url:
        env["DATABASE_URL"] = database_url
    else:
        env.pop("DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.server", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            assert proc.stdout is not None  # stdout=PIPE
            raise RuntimeError(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return LiveServer(url, token, proc)
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = start_server(tmp_path)
    yield server
    stop_server(server)


def login_page(browser: Any, server: LiveServer, width: int = 1280) -> Any:
    """A logged-in page of the live server (its runs list shown) that collects the page's
    JavaScript errors in `page.errors`, for a test to assert there are none."""
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(f"{server.url}/login")
    page.fill("input[name=token]", server.token)
    page.click("button[type=submit]")
    page.wait_for_selector("#runs-table")
    return page


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_claim(client: ServerClient, worker_id: str, timeout: float = 30) -> ClaimResponse:
    """The worker client's claim, tried until the server hands out a run."""
    claimed: list[ClaimResponse | None] = []

    def got_one() -> bool:
        claimed.append(client.claim(worker_id))
        return claimed[-1] is not None

    wait_for(got_one, timeout, "a claim")
    got = claimed[-1]
    assert got is not None
    return got
