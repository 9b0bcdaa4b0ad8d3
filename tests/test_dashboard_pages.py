"""Dashboard pages through TestClient: login redirects, empty and error states, no token
in anything served, Plotly served locally, the new-run form's fields, figure files, and
the chart series read from per-block extremes."""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services import metrics
from app.services.dashboard import CHART_KEYS, CHARTS
from tests.app_helpers import claim, create_run, register
from dlite.config import schema
from dlite.tasks import TASKS

PAGES = ("/", "/runs/new", "/runs/table", "/runs/1", "/runs/1/panels", "/vendor/plotly.min.js")


@pytest.fixture
def browser_client(settings) -> TestClient:
    """A logged-in browser: session cookie and CSRF cookie, no bearer header."""
    with TestClient(create_app(settings), follow_redirects=False) as c:
        assert c.post("/login", data={"token": settings.token, "next": "/"}).status_code == 303
        yield c


def _running_run(client: TestClient, n: int = 20) -> tuple[int, int]:
    rid = create_run(client)["id"]
    attempt = claim(client, register(client))["attempt"]
    points = [{"key": k, "step": s, "value": 1.0 / (s + 1), "wall_time": 1e9 + s}
              for k in CHART_KEYS for s in range(n)]
    client.post(f"/api/runs/{rid}/metrics", json={"attempt": attempt, "points": points}).raise_for_status()
    return rid, attempt


@pytest.mark.parametrize("path", PAGES)
def test_pages_need_a_session(settings, path) -> None:
    with TestClient(create_app(settings), follow_redirects=False) as anon:
        r = anon.get(path)
    assert r.status_code == 303 and r.headers["location"] == f"/login?next={path}"


def test_empty_runs_page_shows_the_empty_state(browser_client) -> None:
    r = browser_client.get("/")
    assert r.status_code == 200 and "No runs yet" in r.text and 'href="/runs/new"' in r.text


def test_unknown_run_is_a_friendly_404_page(browser_client) -> None:
    for path in ("/runs/999", "/runs/999/panels"):
        r = browser_client.get(path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        assert "There is no run 999" in r.text and 'href="/"' in r.text


def test_run_list_and_run_page_show_the_run(client, browser_client, settings) -> None:
    rid, attempt = _running_run(client)
    client.post(f"/api/runs/{rid}/checklist", json={"attempt": attempt, "key": "data.ready",
                                                    "detail": "checked"}).raise_for_status()
    client.post(f"/api/runs/{rid}/evaluations", json={
        "attempt": attempt, "step": 19, "kind": "final", "score_mean": 97.0, "score_std": 2.0,
        "returns": [1.0], "scores": [97.0], "n_envs": 1, "n_episodes": 1}).raise_for_status()
    listing = browser_client.get("/").text
    assert f'href="/runs/{rid}"' in listing and "running" in listing and "hopper-medium-v2" in listing
    assert "97.0" in listing and "99.5" in listing and "-2.5" in listing
    page = browser_client.get(f"/runs/{rid}").text
    assert "☑" in page and "checked" in page and "Stage 0: smoke test" in page
    assert "97.0 ± 2.0" in page and "99.5 ± 0.7" in page and TASKS["hopper-medium-v2"].paper_r1.source in page
    for field in schema():
        assert f"<code>{field['name']}</code>" in page
    assert "/vendor/plotly.min.js" in page and "cdn" not in page.lower()


def test_demo_runs_are_never_compared_with_the_paper(client, browser_client) -> None:
    rid = client.post("/api/runs", json={"task": "hopper-medium-v2", "config": {}, "is_demo": True}).json()["id"]
    attempt = claim(client, register(client))["attempt"]
    client.post(f"/api/runs/{rid}/evaluations", json={
        "attempt": attempt, "step": 19, "kind": "final", "score_mean": 12.0, "score_std": 1.0,
        "returns": [1.0], "scores": [12.0], "n_envs": 1, "n_episodes": 1}).raise_for_status()
    page = browser_client.get(f"/runs/{rid}").text
    assert "12.0 ± 1.0" in page and "none: demo data" in page and "-87.5" not in page
    assert "-87.5" not in browser_client.get("/").text
    assert "hopper-medium-v2" not in client.get("/api/results.md").text


def test_no_page_or_script_contains_the_token(client, browser_client, settings) -> None:
    rid, _ = _running_run(client)
    for path in ("/", "/runs/new", "/runs/table", f"/runs/{rid}", f"/runs/{rid}/panels",
                 "/static/dashboard.js", "/static/style.css", "/login"):
        r = browser_client.get(path)
        assert r.status_code == 200, path
        assert settings.token not in r.text, path


def test_plotly_is_served_locally_as_javascript(browser_client) -> None:
    r = browser_client.get("/vendor/plotly.min.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert len(r.content) > 1_000_000 and b"plotly" in r.content[:2000].lower()


def test_new_run_form_has_every_field_with_its_default(browser_client) -> None:
    page = browser_client.get("/runs/new").text
    for task in TASKS:
        assert f'<option value="{task}"' in page
    for field in schema():
        if field["name"] != "task":
            assert f'id="f-{field["name"]}"' in page and f'id="err-{field["name"]}"' in page
    assert 'value="5,5,9"' in page and 'value="256"' in page


def test_cookie_session_creates_runs_with_csrf_and_422_names_the_field(browser_client) -> None:
    csrf = {"X-CSRF-Token": browser_client.cookies["csrf"]}
    bad = browser_client.post("/api/runs", json={"task": "hopper-medium-v2", "config": {"batch_size": 0}},
                              headers=csrf)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "batch_size"
    ok = browser_client.post("/api/runs", json={"task": "hopper-medium-v2", "config": {}}, headers=csrf)
    assert ok.status_code == 201


def test_loss_charts_plot_what_dlite_reports() -> None:
    train = pytest.importorskip("dlite.train")
    assert set(train.LOSS_KEYS) <= set(CHART_KEYS)
    assert [c["file"] for c in CHARTS] == ["loss_curve.png", "invdyn_loss_curve.png", "normalized_score.png"]


def test_figures_are_written_and_served(client, settings) -> None:
    rid, _ = _running_run(client)
    assert client.get(f"/api/runs/{rid}/figures/loss_curve.png").status_code == 404
    files = client.post(f"/api/runs/{rid}/figures").json()["files"]
    assert [f["name"] for f in files] == [c["file"] for c in CHARTS]
    for f in files:
        assert (settings.data_dir / "results" / str(rid) / f["name"]).stat().st_size > 1000
        r = client.get(f["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    assert client.get(f"/api/runs/{rid}/figures/..%2Ftoken").status_code == 404
    assert client.get(f"/runs/{rid}/panels").text.count(f"/api/runs/{rid}/figures/") == 3


def test_figures_take_any_run_name_as_plain_text(client) -> None:
    rid = client.post("/api/runs", json={"task": "hopper-medium-v2", "name": r"$\foo$ 50% {x}"}).json()["id"]
    assert client.post(f"/api/runs/{rid}/figures").status_code == 200, "a name is not matplotlib math"


def test_chart_series_from_blocks_keeps_spikes_ends_and_bound(client) -> None:
    rid = create_run(client)["id"]
    n = 150_000  # spans more blocks than buckets, so the block path is taken
    values = [math.sin(i / 500) for i in range(n)]
    values[31_337], values[77_777] = 50.0, -50.0
    with client.app.state.db.write() as session:
        metrics.upsert_points(session, rid, ({"key": "loss0", "step": 7 + i, "value": v, "wall_time": float(i)}
                                             for i, v in enumerate(values)), notify=False)
    s = client.get(f"/api/runs/{rid}/charts", params={"max_points": 1000}).json()["series"]["loss0"]
    assert s["total"] == n and s["downsampled"] and 900 <= len(s["steps"]) <= 1000
    assert s["steps"] == sorted(s["steps"]) and s["steps"][0] == 7 and s["steps"][-1] == n + 6
    assert 50.0 in s["values"] and -50.0 in s["values"]
    exact = client.get(f"/api/runs/{rid}/metrics", params={"key": "loss0", "max_points": 1000}).json()
    assert min(s["values"]) == min(exact["values"]) and max(s["values"]) == max(exact["values"])
    with client.app.state.db.write() as session:  # an overwrite raises the spike's block minimum
        metrics.upsert_points(session, rid, [{"key": "loss0", "step": 7 + 77_777, "value": 0.0,
                                              "wall_time": 0.0}], notify=False)
    s = client.get(f"/api/runs/{rid}/charts").json()["series"]["loss0"]
    assert -50.0 not in s["values"] and min(s["values"]) >= -1.0
