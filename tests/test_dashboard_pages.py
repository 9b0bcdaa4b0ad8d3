"""Dashboard pages through TestClient: login redirects, empty and error states, no token
in anything served, Plotly served locally, the new-run form's fields, figure files, and
the chart series read from per-block extremes."""

from __future__ import annotations

import dataclasses
import math
import re
import time
import types
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.models import Run
from app.services import metrics
from app.services.dashboard import FIGURE_FILES, charts
from app.services.events import changes_since
from dlite.config import from_dict, schema
from dlite.tasks import PAPER_PLANNING_HZ, PAPER_PLANNING_SOURCE, TASKS
from tests.app_helpers import claim, claim_run, create_run, register

CHARTS = charts(3)  # a run with the default horizons, 5,5,9
CHART_KEYS = tuple(k for c in CHARTS for k in c["keys"])
PAGES = ("/", "/runs/new", "/runs/table", "/runs/1", "/runs/1/panels", "/vendor/plotly.min.js")


def _running_run(client: TestClient, n: int = 20, paper: bool = False) -> tuple[int, int]:
    rid = create_run(client, paper=paper)["id"]
    attempt = claim_run(client, register(client))["attempt"]
    points = [{"key": k, "step": s, "value": 1.0 / (s + 1), "wall_time": 1e9 + s} for k in CHART_KEYS for s in range(n)]
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
    rid, attempt = _running_run(client, paper=True)
    client.post(
        f"/api/runs/{rid}/checklist", json={"attempt": attempt, "key": "data.ready", "detail": "checked"}
    ).raise_for_status()
    client.post(
        f"/api/runs/{rid}/evaluations",
        json={
            "attempt": attempt,
            "step": 19,
            "kind": "final",
            "score_mean": 97.0,
            "score_std": 2.0,
            "returns": [1.0],
            "scores": [97.0],
            "n_envs": 1,
            "n_episodes": 1,
        },
    ).raise_for_status()
    listing = browser_client.get("/").text
    assert f'href="/runs/{rid}"' in listing and "running" in listing and "hopper-medium-v2" in listing
    assert "97.0" in listing and "99.5" in listing and "-2.5" in listing
    page = browser_client.get(f"/runs/{rid}").text
    done = page.split('data-key="data.ready"')[1].split("</li>")[0]
    assert "icon-check" in done and "done:" in done and "checked" in done and "Stage 0: smoke test" in page
    assert "97.0 ± 2.0" in page and "99.5 ± 0.7" in page and TASKS["hopper-medium-v2"].paper_r1.source in page
    for field in schema():
        assert f"<code>{field['name']}</code>" in page
    assert "/vendor/plotly.min.js" in page and "cdn" not in page.lower()


def test_the_run_list_compares_only_a_final_evaluation_with_the_paper(client, browser_client) -> None:
    """Quick evaluations are a few noisy episodes: shown as such, their best never called a score."""
    rid, attempt = _running_run(client, paper=True)
    for step, score in ((10, 40.0), (20, 95.0), (30, 60.0)):
        client.post(
            f"/api/runs/{rid}/evaluations",
            json={
                "attempt": attempt,
                "step": step,
                "kind": "quick",
                "score_mean": score,
                "score_std": 1.0,
                "returns": [1.0],
                "scores": [score],
                "n_envs": 1,
                "n_episodes": 1,
            },
        ).raise_for_status()
    row = browser_client.get("/").text.split(f'data-run-id="{rid}"')[1].split("</tr>")[0]
    cells = dict(re.findall(r'<td data-label="([^"]+)" class="num">([^<]*)</td>', row))
    assert (cells["final score"], cells["latest quick eval"], cells["best quick eval"]) == ("–", "60.0", "95.0")
    assert cells["difference"] == "–", "no final evaluation, no difference to the paper"
    client.post(
        f"/api/runs/{rid}/evaluations",
        json={
            "attempt": attempt,
            "step": 40,
            "kind": "final",
            "score_mean": 99.0,
            "score_std": 2.0,
            "returns": [1.0],
            "scores": [99.0],
            "n_envs": 1,
            "n_episodes": 1,
        },
    ).raise_for_status()
    row = browser_client.get("/").text.split(f'data-run-id="{rid}"')[1].split("</tr>")[0]
    cells = dict(re.findall(r'<td data-label="([^"]+)" class="num">([^<]*)</td>', row))
    assert (cells["final score"], cells["latest quick eval"], cells["best quick eval"], cells["difference"]) == (
        "99.0",
        "60.0",
        "95.0",
        "-0.5",
    ), "the final evaluation is neither a quick one nor their best"


def test_the_hyper_parameters_mark_changed_values_and_show_the_task_tables(client, browser_client) -> None:
    rid = client.post("/api/runs", json={"task": "hopper-medium-v2", "config": {"d_model": 64, "n_heads": 4}}).json()[
        "id"
    ]
    page = browser_client.get(f"/runs/{rid}").text
    row = lambda name: page.split(f'<tr data-param="{name}"')[1].split("</tr>")[0]  # noqa: E731
    assert 'class="changed"' in row("d_model") and "default <code>256</code>" in row("d_model")
    assert 'class="changed"' not in row("depth") and "default" not in row("depth")
    task = TASKS["hopper-medium-v2"]
    assert f"takes <code>{task.guidance_r1}</code> from the task table" in row("w_cfg")
    assert f"takes <code>{task.target_return_r2}</code> from the task table" in row("r2_target_return")


SAFE_TEXT = re.compile("[\t\n\r\x20-\x7e\xa0-\xff\u2010-\u205e\u2212]*")
"""What the pages may write: ASCII, Latin-1 (± × · « »), general punctuation (– — ‘ ’ … •) and
the minus sign, which every font Debian's chromium falls back to draws; any other symbol is
an icon drawn by style.css."""


def test_status_glyphs_are_ones_debians_fonts_draw(client, browser_client, settings) -> None:
    """An emoji (the hourglass of a queued run) drew as an empty box in Debian's Chromium, and
    so may ◷ ▶ ✓ ✗ ⊘ ⚠ ☐ 🗀 where its fonts lack them: every status, checklist tick, backup state
    and device-check verdict is an icon with its words beside it."""
    from tests.test_device_check_app import REPORT

    rid, attempt = _claimed(client, hub_repo="u/r")
    a = {"attempt": attempt}
    client.post(f"/api/runs/{rid}/device-check", json={**a, **REPORT}).raise_for_status()
    client.post(f"/api/runs/{rid}/checklist", json={**a, "key": "data.ready", "failed": True, "detail": "x"})
    client.post(f"/api/runs/{rid}/checklist", json={**a, "key": "smoke.backup", "detail": "ok"})
    for step, state, url in (
        (10, "local", None),
        (20, "uploading", None),
        (30, "error", None),
        (40, "hub", "file:///backup/ckpt_00000040.pt"),
        (50, "hub", "https://huggingface.co/u/r/resolve/main/ckpt_00000050.pt"),
    ):
        body = {**a, "step": step, "size": 1, "sha256": "a" * 64, "backup_state": state, "hub_url": url}
        client.post(f"/api/runs/{rid}/checkpoints", json=body).raise_for_status()
    client.post(f"/api/runs/{rid}/checkpoints", json={**a, "step": 10, "size": 1, "sha256": "a" * 64, "pruned": True})
    lost, _ = _claimed(client)
    ended = [create_run(client)["id"] for _ in range(3)]
    with client.app.state.db.write() as session:
        session.get(Run, lost).lease_expires_at = time.time() + settings.lease_seconds * 0.2  # silent, lease not out
        for run_id, status in zip(ended, ("succeeded", "failed", "interrupted")):
            session.get(Run, run_id).status = status
    client.post(f"/api/runs/{create_run(client)['id']}/cancel").raise_for_status()
    sweep = client.post(
        "/api/sweeps", json={"tasks": ["hopper-medium-v2"], "seeds": [0, 1], "variants": ["R1"], "config": {}}
    ).json()
    listing = browser_client.get("/").text
    for icon in ("clock", "play", "check", "cross", "ban", "warning"):
        assert f"icon-{icon}" in listing, icon
    assert "worker lost" in listing
    pages = [
        "/",
        "/runs/table",
        f"/runs/{rid}",
        f"/runs/{rid}/panels",
        f"/runs/{lost}",
        "/sweeps",
        f"/sweeps/{sweep['id']}",
    ]
    for path in pages:
        # the event log and console hold what was logged (a worker's text may be anything): data, not markup
        text = re.sub(r'<ol class="events.*?</ol>', "", browser_client.get(path).text, flags=re.S)
        unsafe = sorted({f"U+{ord(c):04X} {c}" for c in SAFE_TEXT.sub("", text)})
        assert not unsafe, (path, unsafe)


def test_demo_runs_are_never_compared_with_the_paper(client, browser_client) -> None:
    rid = client.post("/api/runs", json={"task": "hopper-medium-v2", "config": {}, "is_demo": True}).json()["id"]
    attempt = claim_run(client, register(client))["attempt"]
    client.post(
        f"/api/runs/{rid}/evaluations",
        json={
            "attempt": attempt,
            "step": 19,
            "kind": "final",
            "score_mean": 12.0,
            "score_std": 1.0,
            "returns": [1.0],
            "scores": [12.0],
            "n_envs": 1,
            "n_episodes": 1,
        },
    ).raise_for_status()
    page = browser_client.get(f"/runs/{rid}").text
    assert "12.0 ± 1.0" in page and "none: demo data" in page and "-87.5" not in page
    assert "-87.5" not in browser_client.get("/").text
    assert "hopper-medium-v2" not in client.get("/api/results.md").text


def test_no_page_or_script_contains_the_token(client, browser_client, settings) -> None:
    rid, _ = _running_run(client)
    for path in (
        "/",
        "/runs/new",
        "/runs/table",
        f"/runs/{rid}",
        f"/runs/{rid}/panels",
        "/static/dashboard.js",
        "/static/style.css",
        "/login",
    ):
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
        if field.get("choices"):  # a fixed choice is a select of exactly its choices, the default picked
            select = page.split(f'<select id="f-{field["name"]}"')[1].split("</select>")[0]
            assert re.findall(r'<option value="([^"]+)"', select) == list(field["choices"])
            assert f'<option value="{field["default"]}" selected>' in select
    assert 'value="5,5,9"' in page and 'value="256"' in page


def test_cookie_session_creates_runs_with_csrf_and_422_names_the_field(browser_client) -> None:
    csrf = {"X-CSRF-Token": browser_client.cookies["csrf"]}
    bad = browser_client.post("/api/runs", json={"task": "hopper-medium-v2", "config": {"batch_size": 0}}, headers=csrf)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "batch_size"
    ok = browser_client.post("/api/runs", json={"task": "hopper-medium-v2", "config": {}}, headers=csrf)
    assert ok.status_code == 201


def test_loss_charts_plot_what_dlite_reports() -> None:
    train = pytest.importorskip("dlite.train")
    for horizons in ([9, 17], [5, 5, 9], [5, 3, 5, 5]):  # the losses a trainer of that config logs
        logged = train.Trainer.loss_keys.fget(types.SimpleNamespace(cfg=from_dict({"horizons": horizons})))
        assert set(logged) <= {k for c in charts(len(horizons)) for k in c["keys"]}
    logged = {"lr", "steps_per_s"}  # the worker reports these LogRecord fields as metrics
    assert logged <= {f.name for f in dataclasses.fields(train.LogRecord)} and logged <= set(CHART_KEYS)
    assert FIGURE_FILES == ("loss_curve.png", "invdyn_loss_curve.png", "normalized_score.png")


def test_figures_are_written_and_served(client, settings) -> None:
    rid, _ = _running_run(client)
    assert client.get(f"/api/runs/{rid}/figures/loss_curve.png").status_code == 404
    files = client.post(f"/api/runs/{rid}/figures").json()["files"]
    assert [f["name"] for f in files] == list(FIGURE_FILES)
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
        metrics.upsert_points(
            session,
            rid,
            ({"key": "loss0", "step": 7 + i, "value": v, "wall_time": float(i)} for i, v in enumerate(values)),
            notify=False,
        )
    s = client.get(f"/api/runs/{rid}/charts", params={"max_points": 1000}).json()["series"]["loss0"]
    assert s["total"] == n and s["downsampled"] and 900 <= len(s["steps"]) <= 1000
    assert s["steps"] == sorted(s["steps"]) and s["steps"][0] == 7 and s["steps"][-1] == n + 6
    assert 50.0 in s["values"] and -50.0 in s["values"]
    exact = client.get(f"/api/runs/{rid}/metrics", params={"key": "loss0", "max_points": 1000}).json()
    assert min(s["values"]) == min(exact["values"]) and max(s["values"]) == max(exact["values"])
    with client.app.state.db.write() as session:  # an overwrite raises the spike's block minimum
        metrics.upsert_points(
            session, rid, [{"key": "loss0", "step": 7 + 77_777, "value": 0.0, "wall_time": 0.0}], notify=False
        )
    s = client.get(f"/api/runs/{rid}/charts").json()["series"]["loss0"]
    assert -50.0 not in s["values"] and min(s["values"]) >= -1.0


def test_chart_series_carry_non_finite_points_to_the_page_and_the_live_feed(client) -> None:
    """The run page marks non-finite steps from the charts answer and from the change feed;
    a series that was never finite (diverged at its first log) is in the answer too."""
    rid = create_run(client)["id"]
    attempt = claim_run(client, register(client))["attempt"]
    since = client.get(f"/api/runs/{rid}").json()["change_id"]
    bad = [
        {"key": "loss0", "step": 30, "value": None, "nonfinite": "nan", "wall_time": 1030.0},
        {"key": "invdyn_loss", "step": 10, "value": None, "nonfinite": "-inf", "wall_time": 1010.0},
    ]
    points = [{"key": "loss0", "step": s, "value": 0.5, "wall_time": 1000.0 + s} for s in (10, 20)] + bad
    client.post(f"/api/runs/{rid}/metrics", json={"attempt": attempt, "points": points}).raise_for_status()
    series = client.get(f"/api/runs/{rid}/charts").json()["series"]
    assert series["loss0"]["steps"] == [10, 20]
    assert series["loss0"]["nonfinite"] == {"total": 1, "steps": [30], "values": ["nan"], "wall_times": [1030.0]}
    assert series["invdyn_loss"]["total"] == 0 and series["invdyn_loss"]["nonfinite"]["values"] == ["-inf"]
    with client.app.state.db.read() as session:
        fed = [p for c in changes_since(session, since, rid) if c.kind == "metrics" for p in c.data["points"]]
    assert bad[0] in fed and bad[1] in fed, "a live run page gets them as they come"
    assert client.post(f"/api/runs/{rid}/figures").status_code == 200, "the PNGs take a never-finite series"
    from app.services.figures import chart_figure

    never = chart_figure(CHARTS[1], "t", {"invdyn_loss": series["invdyn_loss"]}, [], None).axes[0]
    assert [t.get_text() for t in never.texts] == ["no data yet"] and not never.get_lines()


def _claimed(client: TestClient, **config: Any) -> tuple[int, int]:
    """A run claimed by a worker on a named GPU."""
    rid = create_run(client, **config)["id"]
    worker = client.post(
        "/api/workers/register", json={"name": "gpu", "host": "h", "device": "cuda", "gpu_name": "Tesla T4"}
    ).json()["worker_id"]
    return rid, claim_run(client, worker)["attempt"]


def test_clone_and_edit_starts_the_form_at_the_runs_config(client, browser_client) -> None:
    rid = client.post(
        "/api/runs",
        json={"task": "walker2d-medium-v2", "name": "w2d", "config": {"batch_size": 64, "horizons": [3, 5, 9]}},
    ).json()["id"]
    assert f'href="/runs/new?from={rid}"' in browser_client.get(f"/runs/{rid}").text
    form = browser_client.get(f"/runs/new?from={rid}").text
    assert f'href="/runs/{rid}"' in form and "Cloned from" in form
    assert '<option value="walker2d-medium-v2" selected>' in form and 'value="w2d (clone)"' in form
    assert 'value="64" data-default="256"' in form and 'value="3,5,9" data-default="5,5,9"' in form
    assert "Cloned from" not in browser_client.get("/runs/new").text
    for bad in ("999", "abc", "99999999999999999999999"):
        r = browser_client.get(f"/runs/new?from={bad}")
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        assert f"There is no run {bad} to clone" in r.text


def test_backup_needs_a_target_and_says_so(client, browser_client) -> None:
    rid, _ = _claimed(client)
    page = browser_client.get(f"/runs/{rid}").text
    assert 'data-action="backup" disabled aria-describedby="backup-why"' in page
    assert "no backup target: set hub_repo" in page
    assert '<li class="skipped" data-key="smoke.backup">' in page and "skipped: no backup target" in page
    refused = client.post(f"/api/runs/{rid}/backup")
    assert refused.status_code == 409 and "no backup target" in refused.json()["detail"]
    [item] = [i for i in client.get(f"/api/runs/{rid}").json()["checklist"] if i["key"] == "smoke.backup"]
    assert item["skipped"] == "no backup target" and item["verified_at"] is None

    rid, _ = _claimed(client, hub_repo="user/results")
    page = browser_client.get(f"/runs/{rid}").text
    assert 'data-action="backup" >' in page and "<code>user/results</code>" in page
    assert '<li class="todo" data-key="smoke.backup">' in page
    assert client.post(f"/api/runs/{rid}/backup").status_code == 202


def test_tracebacks_in_the_event_log_fold_and_keep_their_lines(client, browser_client) -> None:
    rid, attempt = _claimed(client)
    trace = (
        'Traceback (most recent call last):\n  File "/x/huggingface_hub/hf_api.py", line 3, in f\n'
        "    raise ConnectError()\nhttpx.ConnectError: Name or service not known\n"
    )
    client.post(f"/api/runs/{rid}/events", json={"attempt": attempt, "level": "error", "message": trace})
    page = browser_client.get(f"/runs/{rid}").text
    assert "<details><summary>httpx.ConnectError: Name or service not known</summary>" in page
    assert '<pre class="traceback">Traceback (most recent call last):\n  File &#34;/x/huggingface_hub/hf_api.py' in page


def test_run_page_shows_device_time_eta_and_then_the_final_state(client, browser_client) -> None:
    rid, attempt = _claimed(client, num_envs=1, num_episodes=1)
    client.post(f"/api/runs/{rid}/stage", json={"attempt": attempt, "stage": "train"}).raise_for_status()
    client.post(f"/api/runs/{rid}/heartbeat", json={"attempt": attempt, "step": 400, "steps_per_s": 2.0})
    client.post(
        f"/api/runs/{rid}/checklist",
        json={"attempt": attempt, "key": "train.start", "detail": "resumed from step 400 (local checkpoint)"},
    )
    page = browser_client.get(f"/runs/{rid}").text
    assert "stage <strong>train</strong>" in page and "2.0 steps/s · ETA 5m 00s" in page  # 600 steps left
    assert "elapsed <span" in page and "on <strong>cuda</strong> (Tesla T4)" in page
    assert "training started" in page and "resumed from step 400 (local checkpoint)" in page
    assert "step N" not in page and "started fresh" not in page
    assert "1 env × 1 episode done" in page and "500 training steps done" in page

    client.post(
        f"/api/runs/{rid}/evaluations",
        json={
            "attempt": attempt,
            "step": 1000,
            "kind": "final",
            "score_mean": 50.0,
            "score_std": 2.0,
            "returns": [1.0],
            "scores": [50.0],
            "n_envs": 1,
            "n_episodes": 1,
        },
    ).raise_for_status()
    client.post(f"/api/runs/{rid}/finish", json={"attempt": attempt, "status": "succeeded"}).raise_for_status()
    page = browser_client.get(f"/runs/{rid}").text
    summary = page.split('aria-label="status"')[1].split("</section>")[0]
    assert "steps/s" not in summary and "ETA" not in summary and "stage <strong>" not in summary
    assert "· finished " in page and "took <span" in page and "final score <strong>50.0 ± 2.0</strong>" in page
    row = browser_client.get("/").text.split(f'data-run-id="{rid}"')[1].split("</tr>")[0]
    assert '<td data-label="steps/s" class="num">–</td>' in row and '<td data-label="stage">–</td>' in row


def test_planning_speed_beside_the_papers_with_its_device(client, browser_client) -> None:
    rid, attempt = _claimed(client, variant="R2")
    for variant, batch, single in (("R1", 95.0, 20.0), ("R2", 40.0, 8.0)):
        client.post(
            f"/api/runs/{rid}/evaluations",
            json={
                "attempt": attempt,
                "step": 1000,
                "kind": "final",
                "variant": variant,
                "score_mean": 50.0,
                "score_std": 2.0,
                "returns": [1.0],
                "scores": [50.0],
                "n_envs": 50,
                "n_episodes": 1,
                "latency_ms": batch,
                "latency_ms_1env": single,
                "device": "cuda (Tesla T4)",
            },
        ).raise_for_status()
    page = browser_client.get(f"/runs/{rid}").text
    r1 = page.split('<tr data-variant="R1">')[1].split("</tr>")[0]
    r2 = page.split('<tr data-variant="R2">')[1].split("</tr>")[0]
    assert "cuda (Tesla T4)" in r1 and "526" in r1 and "50 envs, 95.0 ms per decision" in r1
    assert "50.0 Hz" in r1 and f"{PAPER_PLANNING_HZ['R1']} Hz" in r1
    assert "1,250" in r2 and "125.0 Hz" in r2 and f"{PAPER_PLANNING_HZ['R2']} Hz" in r2
    assert PAPER_PLANNING_SOURCE in page
    block = page.split('<tr data-param="block">')[1].split("</tr>")[0]
    assert '<code>"reference"</code>' in block and "adaLN-Zero" in block


def test_lr_and_speed_charts_read_the_logged_series(client) -> None:
    rid, attempt = _claimed(client)
    points = [
        {"key": k, "step": s, "value": v, "wall_time": 1e9 + s}
        for s in (10, 20)
        for k, v in (("lr", 2e-4), ("steps_per_s", 3.0), ("other", 1.0))
    ]
    client.post(f"/api/runs/{rid}/metrics", json={"attempt": attempt, "points": points}).raise_for_status()
    series = client.get(f"/api/runs/{rid}/charts").json()["series"]
    assert set(series) == {"lr", "steps_per_s"} and series["lr"]["values"] == [2e-4, 2e-4]


def test_figures_have_whole_titles_plain_ticks_and_no_paper_line_for_a_demo() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from app.services.figures import chart_figure

    steps = list(range(0, 1_000_001, 1000))
    narrow = {"loss0": {"steps": steps, "values": [0.09 - 0.07 * i / len(steps) for i in range(len(steps))]}}
    label = "halfcheetah-medium-expert-v2 (" + "a long run name " * 6 + ")"
    [loss, _, score] = CHARTS[:3]
    fig = chart_figure(loss, label, narrow, [], None)
    fig.canvas.draw()
    renderer = cast(FigureCanvasAgg, fig.canvas).get_renderer()  # chart_figure draws with Agg
    ax = fig.axes[0]
    title = ax.title.get_window_extent(renderer)
    assert title.x0 >= 0 and title.x1 <= fig.bbox.x1 and title.y1 <= fig.bbox.y1
    ticks = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True) + ax.get_xticklabels()]
    labelled = [t for t in ticks if t]
    assert "0.02" in labelled and "1,000,000" in labelled and len(set(labelled) & {"2", "3", "4"}) == 0
    assert not any("$" in t or "10^" in t for t in labelled)
    assert ax.xaxis.get_offset_text().get_text() == "" and ax.yaxis.get_offset_text().get_text() == ""
    scores = {"score": {"steps": [100, 200], "values": [40.0, 60.0]}}
    evaluations = [{"step": 200, "score_mean": 60.0, "score_std": 1.0}]
    paper = {"mean": 90.8, "sem": 0.9}
    with_paper = chart_figure(score, "t", scores, evaluations, paper).axes[0]
    demo = chart_figure(score, "t", scores, evaluations, None).axes[0]
    assert any("paper" in t for t in with_paper.get_legend_handles_labels()[1])
    assert not any("paper" in t for t in demo.get_legend_handles_labels()[1])
    assert [line.get_marker() for line in demo.get_lines()][0] == "o", "a sparse series shows its points"


def test_planning_speed_without_a_device_names_the_runs_worker(client, browser_client) -> None:
    rid, attempt = _claimed(client)
    client.post(
        f"/api/runs/{rid}/evaluations",
        json={
            "attempt": attempt,
            "step": 1000,
            "kind": "quick",
            "score_mean": 2.0,
            "score_std": 0.1,
            "returns": [1.0],
            "scores": [2.0],
            "n_envs": 4,
            "n_episodes": 1,
            "latency_ms": 160.0,
        },
    ).raise_for_status()
    page = browser_client.get(f"/runs/{rid}").text
    row = page.split('<tr data-variant="R1">')[1].split("</tr>")[0]
    assert "on <strong>cuda (Tesla T4)</strong>" in row and "quick evaluation, step 1,000" in row
    assert "25<br>" in row and "4 envs, 160.0 ms per decision" in row  # 4 decisions per 0.16 s


def test_a_queued_run_says_its_place_and_what_it_waits_for(client, browser_client, settings) -> None:
    first, second = create_run(client)["id"], create_run(client)["id"]
    assert (
        "#2</strong> in the queue: 1 older run first; no worker is connected"
        in browser_client.get(f"/runs/{second}").text
    )
    wid = register(client)
    claim(client, wid)  # takes the oldest: `first` runs, the only worker is busy
    page = browser_client.get(f"/runs/{second}").text
    assert "#1</strong> in the queue: every connected worker is busy (1 running)" in page
    assert "in the queue" not in browser_client.get(f"/runs/{first}").text
    register(client)  # an idle worker seen just now
    assert "a free worker takes the oldest queued run at its next poll" in browser_client.get(f"/runs/{second}").text


def test_a_run_whose_worker_went_silent_says_worker_lost_and_stops_its_clock(client, browser_client, settings) -> None:
    rid, _ = _running_run(client)
    assert "worker lost" not in browser_client.get(f"/runs/{rid}").text
    silent_for = settings.lease_seconds * 0.8  # past two missed heartbeats (lease / 3 apart), lease not yet out
    with client.app.state.db.write() as session:
        run = session.get(Run, rid)
        run.started_at -= 600
        run.lease_expires_at = time.time() + settings.lease_seconds - silent_for
        session.add(run)
    page = browser_client.get(f"/runs/{rid}").text
    state = page.split('id="run-state">')[1].split("</p>")[0]
    assert "icon-warning" in state and "worker lost" in state and "has sent no\n    heartbeat for" in page
    expires_at = re.search(r"its lease expires in\s+<span class=\"num\">([^<]+)</span>", page)
    assert expires_at is not None
    expires = expires_at.group(1)
    assert expires in ("0m 10s", "0m 11s", "0m 12s")  # a page rendered on a loaded 2-core machine takes a while
    elapsed_at = re.search(r"elapsed <span class=\"num\">([^<]+)</span>", page)
    assert elapsed_at is not None
    elapsed = elapsed_at.group(1)
    assert elapsed in ("9m 10s", "9m 11s", "9m 12s"), "the clock stops at the last heartbeat"
    assert "ETA" not in page.split('id="run-progress"')[1].split("</p>")[0]
