"""The device check through the server: the worker posts its report (fenced, validated),
the run keeps it, and the run detail, export, run page, results.md and the ETA show it."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.protocol import MAX_CHECK_PATHS
from app.services.events import changes_since
from tests.app_helpers import claim_run, create_run, register

REFUSED = "RuntimeError: CUDA error: an illegal memory access"
REPORT: dict[str, Any] = {
    "device": "cuda",
    "device_name": "Tesla T4",
    "memory_gb": 15.6,
    "peak_memory_gb": 1.2,
    "torch": "2.13.0",
    "cuda": "12.6",
    "cpu_capability": "AVX2",
    "requested": {"train": "auto", "plan": "auto"},
    "chosen": {"train": "fused", "plan": "cuda_graph"},
    "paths": [
        {
            "stage": "train",
            "name": "eager",
            "status": "reference",
            "ms": 14.1,
            "warmup_s": 0.9,
            "detail": "fp32, foreach optimisers",
        },
        {
            "stage": "train",
            "name": "fused",
            "status": "ok",
            "ms": 13.0,
            "warmup_s": 0.2,
            "max_diff": 2e-7,
            "tolerance": 1e-4,
        },
        {
            "stage": "train",
            "name": "compile",
            "status": "failed",
            "warmup_s": 41.0,
            "tolerance": 1e-4,
            "detail": REFUSED,
        },
        {
            "stage": "train",
            "name": "amp",
            "status": "skipped",
            "detail": "not the paper's precision: measured only when train_accel asks for it",
        },
        {"stage": "plan", "name": "plain", "status": "reference", "ms": 30.2, "ms_batch": 41.0, "warmup_s": 0.1},
        {
            "stage": "plan",
            "name": "cuda_graph",
            "status": "ok",
            "ms": 1.25,
            "ms_batch": 2.1,
            "warmup_s": 0.5,
            "max_diff": 3e-7,
            "tolerance": 1e-5,
        },
    ],
    "projection": {
        "train_steps": 1000,
        "train_s": 600.0,
        "reflow_pairs_s": 0.0,
        "reflow_s": 0.0,
        "eval_s": 60.0,
        "quick_eval_s": 20.0,
        "final_eval_s": 40.0,
        "total_s": 660.0,
    },
    "check_s": 55.2,
}


@pytest.fixture
def browser_client(settings) -> Iterator[TestClient]:
    """A logged-in browser: session cookie and CSRF cookie, no bearer header."""
    with TestClient(create_app(settings), follow_redirects=False) as c:
        assert c.post("/login", data={"token": settings.token, "next": "/"}).status_code == 303
        yield c


def _claimed(client: TestClient, **config: Any) -> tuple[int, int]:
    """A new run claimed by a worker (the only queued one)."""
    rid = create_run(client, **config)["id"]
    return rid, claim_run(client, register(client))["attempt"]


def _post_check(client: TestClient, rid: int, attempt: int, report: dict = REPORT) -> None:
    r = client.post(f"/api/runs/{rid}/device-check", json={"attempt": attempt, **report})
    assert r.status_code == 200 and r.json() == {"ok": True}, r.text


def _checked_run(client: TestClient, **config: object) -> tuple[int, int]:
    """A claimed run whose worker has posted REPORT."""
    rid, attempt = _claimed(client, **config)
    _post_check(client, rid, attempt)
    return rid, attempt


def _broken(change: Callable[[dict], object]) -> dict:
    """REPORT with one thing wrong."""
    body = copy.deepcopy(REPORT)
    change(body)
    return body


def test_the_report_is_kept_and_shown_in_the_detail_and_the_export(client) -> None:
    rid, attempt = _checked_run(client)
    stored = client.get(f"/api/runs/{rid}").json()["device_check"]
    assert client.get(f"/api/runs/{rid}/export").json()["device_check"] == stored
    assert stored["attempt"] == attempt and stored["chosen"] == REPORT["chosen"]
    assert stored["paths"][2] == {
        **REPORT["paths"][2],
        "ms": None,
        "ms_batch": None,
        "ms_reflow": None,
        "max_diff": None,
    }
    assert stored["projection"] == REPORT["projection"]
    assert client.get(f"/api/runs/{create_run(client)['id']}").json()["device_check"] is None


def test_a_stale_attempt_and_bad_bodies_are_refused(client) -> None:
    rid, attempt = _checked_run(client)
    assert client.post(f"/api/runs/{rid}/device-check", json={**REPORT, "attempt": attempt + 1}).status_code == 409
    bad = {
        "unknown field": _broken(lambda b: b.update(extra=1)),
        "unknown path field": _broken(lambda b: b["paths"][0].update(speedup=2.0)),
        "NaN": _broken(lambda b: b["paths"][0].update(ms=float("nan"))),  # json.dumps writes it as NaN
        "infinity": _broken(lambda b: b["projection"].update(train_s=float("inf"))),
        "too many paths": _broken(lambda b: b.update(paths=b["paths"][:1] * (MAX_CHECK_PATHS + 1))),
        "unknown status": _broken(lambda b: b["paths"][0].update(status="maybe")),
        "unknown stage": _broken(lambda b: b.update(chosen={"smoke": "eager"})),
        "no projection": _broken(lambda b: b.pop("projection")),
    }
    for what, body in bad.items():
        r = client.post(
            f"/api/runs/{rid}/device-check",
            content=json.dumps({"attempt": attempt, **body}),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 422, (what, r.text)
    assert client.get(f"/api/runs/{rid}").json()["device_check"]["paths"][0] == {
        "ms_batch": None,
        "ms_reflow": None,
        "max_diff": None,
        "tolerance": None,
        **REPORT["paths"][0],
    }


def test_a_report_reaches_the_live_feed(client) -> None:
    """The run page re-renders its panels on any message but metrics (dashboard.js)."""
    rid, _ = _checked_run(client)
    with client.app.state.db.read() as session:
        changes = [c for c in changes_since(session, 0, rid) if c.kind == "device_check"]
    assert [c.data["chosen"] for c in changes] == [REPORT["chosen"]]


def test_the_run_page_shows_the_check_its_refusals_and_the_paths_used(client, browser_client) -> None:
    rid, attempt = _claimed(client)
    page = browser_client.get(f"/runs/{rid}").text
    assert 'aria-label="device check"' not in page and "Stage 0: device check" in page
    _post_check(client, rid, attempt)
    client.post(
        f"/api/runs/{rid}/checklist",
        json={"attempt": attempt, "key": "device.check", "detail": "train fused, plan cuda_graph"},
    ).raise_for_status()
    panels = browser_client.get(f"/runs/{rid}/panels").text
    section = panels.split('aria-label="device check"')[1].split("</section>")[0]
    assert "<strong>Tesla T4</strong> (cuda)" in section and "15.6 GB" in section and "1.2 GB" in section
    assert "torch 2.13.0" in section and "CUDA 12.6" in section and "CPU AVX2" in section
    rows = {
        key: section.split(f'data-path="{key}"')[1].split("</tr>")[0]
        for key in ("train.eager", "train.fused", "train.compile", "train.amp", "plan.plain", "plan.cuda_graph")
    }
    used = '<strong class="badge">used</strong>'
    refused = rows["train.compile"]
    assert 'icon-cross" aria-hidden="true"></span> refused' in refused and REFUSED in refused and "41.0 s" in refused
    assert (
        used in rows["train.fused"]
        and 'icon-check" aria-hidden="true"></span> verified' in rows["train.fused"]
        and "13.00 ms" in rows["train.fused"]
    )
    assert "2.0e-07 / 1.0e-04" in rows["train.fused"]
    assert used in rows["plan.cuda_graph"] and "800.0 Hz" in rows["plan.cuda_graph"]
    assert "2.10 ms for the batch" in rows["plan.cuda_graph"]
    assert [k for k, r in rows.items() if used in r] == ["train.fused", "plan.cuda_graph"]
    assert "reference" in rows["train.eager"] and "fp32, foreach optimisers" in rows["train.eager"]
    assert (
        'icon-ban" aria-hidden="true"></span> skipped' in rows["train.amp"]
        and "measured only when train_accel asks for it" in rows["train.amp"]
    )
    assert 'data-label="warm-up / compile"' in rows["train.eager"] and 'data-label="median"' in rows["plan.plain"]
    assert "Projected time" in section and "11m 00s" in section and "10m 00s" in section
    assert "reflow pairs" not in section and "0m 55s" in section  # an R1 run; the check's own time
    checklist = panels.split("Stage 0: device check")[1].split("</ul>")[0]
    assert 'data-key="device.check"' in checklist and "train fused, plan cuda_graph" in checklist


def test_results_md_lists_the_devices_of_the_tables_runs(client) -> None:
    assert "## Devices" not in client.get("/api/results.md").text
    rid, attempt = _checked_run(client, num_envs=1, num_episodes=1)
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
    _checked_run(client)  # checked, but not finished: not in the table, so not listed
    text = client.get("/api/results.md").text
    table = text.split("## Devices")[1].strip().splitlines()
    assert table[0].startswith("| run | device | training path | ms per step | planning path | Hz, 1 env |")
    assert table[2] == f"| #{rid} hopper-medium-v2 | Tesla T4 (cuda) | fused | 13.00 | cuda_graph | 800.0 | 0.2 h |"
    assert not table[3].startswith("|")
    assert text.splitlines()[0].startswith("| task | variant | seeds (n) | mine | paper |")


def test_eta_from_step_0_comes_from_the_projection_until_a_speed_is_measured(client, browser_client) -> None:
    rid, attempt = _checked_run(client)
    # 1000 steps at 0.6 s each, plus 60 s of evaluation (20 s quick ones along the way, 40 s final)
    assert client.get("/api/runs").json()[0]["id"] == rid
    row = browser_client.get("/").text.split(f'data-run-id="{rid}"')[1].split("</tr>")[0]
    assert '<td data-label="ETA" class="num">11m 00s</td>' in row
    assert "· ETA 11m 00s" in browser_client.get(f"/runs/{rid}/panels").text
    client.post(f"/api/runs/{rid}/heartbeat", json={"attempt": attempt, "step": 500}).raise_for_status()
    row = browser_client.get("/").text.split(f'data-run-id="{rid}"')[1].split("</tr>")[0]
    assert '<td data-label="ETA" class="num">5m 50s</td>' in row  # 500 steps left, half the quick evaluations
    client.post(f"/api/runs/{rid}/heartbeat", json={"attempt": attempt, "step": 500, "steps_per_s": 2.0})
    # measured: 250 s of training at 2 steps/s, and the evaluations still ahead
    assert "2.0 steps/s · ETA 5m 00s" in browser_client.get(f"/runs/{rid}/panels").text


def test_a_report_without_the_evaluation_split_counts_it_all_as_final(client, browser_client) -> None:
    """Older workers send `eval_s` alone: the ETA still counts it (until the run ends)."""
    rid, attempt = _claimed(client)
    projection = {k: v for k, v in REPORT["projection"].items() if k not in ("quick_eval_s", "final_eval_s")}
    _post_check(client, rid, attempt, {**REPORT, "projection": projection})
    client.post(f"/api/runs/{rid}/heartbeat", json={"attempt": attempt, "step": 500}).raise_for_status()
    assert "· ETA 6m 00s" in browser_client.get(f"/runs/{rid}/panels").text  # 300 s training + 60 s evaluation


def test_an_r2_runs_projected_eta_counts_reflow_until_it_is_passed(client, browser_client) -> None:
    rid, attempt = _claimed(client, variant="R2", reflow_gradient_steps=100)
    _post_check(
        client,
        rid,
        attempt,
        {**REPORT, "projection": {**REPORT["projection"], "reflow_pairs_s": 120.0, "reflow_s": 60.0, "total_s": 840.0}},
    )
    eta = lambda: browser_client.get(f"/runs/{rid}/panels").text.split("· ETA ")[1].split("<")[0]  # noqa: E731
    assert eta() == "14m 00s"  # 600 s training + 120 s pairs + 60 s reflow + 60 s evaluation
    client.post(f"/api/runs/{rid}/stage", json={"attempt": attempt, "stage": "reflow_train"}).raise_for_status()
    client.post(f"/api/runs/{rid}/heartbeat", json={"attempt": attempt, "step": 1000}).raise_for_status()
    assert eta() == "1m 41s"  # training and pairs done: reflow, 100/1100 of the quick evaluations, the final one
    client.post(f"/api/runs/{rid}/heartbeat", json={"attempt": attempt, "step": 1100}).raise_for_status()
    client.post(f"/api/runs/{rid}/stage", json={"attempt": attempt, "stage": "eval"}).raise_for_status()
    assert eta() == "0m 40s"  # the final evaluation
    panels = browser_client.get(f"/runs/{rid}/panels").text
    assert "reflow pairs" in panels.split('aria-label="device check"')[1]
