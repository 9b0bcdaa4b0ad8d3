"""Worker protocol through the app: leases, the attempt fence, commands, results."""

from __future__ import annotations

import math
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services import metrics
from tests.app_helpers import claim, claim_run, create_run, make_settings, register

SHA = "ab" * 32


def _points(n: int, value: float = 1.0, key: str = "loss") -> list[dict]:
    return [{"key": key, "step": i, "value": value + i, "wall_time": 1000.0 + i} for i in range(n)]


@pytest.fixture
def short_lease(tmp_path):
    s = make_settings(tmp_path, lease_seconds=0.3, lease_sweep_seconds=60)
    with TestClient(create_app(s), headers={"Authorization": f"Bearer {s.token}"}) as c:
        yield c


def test_claim_hands_out_the_oldest_run_with_its_full_config(client) -> None:
    first, second = create_run(client), create_run(client, "walker2d-medium-v2")
    worker = register(client)
    got = claim_run(client, worker)
    assert got["run_id"] == first["id"] and got["attempt"] == 1 and got["config"] == first["config"]
    assert got["lease_seconds"] == 60 and got["is_demo"] is False and got["task"] == "hopper-medium-v2"
    assert claim_run(client, worker)["run_id"] == second["id"]
    assert claim(client, worker) is None
    run = client.get(f"/api/runs/{first['id']}").json()
    assert run["status"] == "running" and run["worker_id"] == worker and run["started_at"]
    assert client.post("/api/workers/nope/claim").status_code == 404


def test_lost_lease_interrupts_then_requeues_with_next_attempt(short_lease) -> None:
    c = short_lease
    run = create_run(c)
    old, new = register(c, "old"), register(c, "new")
    assert claim_run(c, old)["attempt"] == 1
    assert c.post(f"/api/runs/{run['id']}/metrics", json={"attempt": 1, "points": _points(3)}).status_code == 200
    time.sleep(0.4)
    got = claim_run(c, new)
    assert got["run_id"] == run["id"] and got["attempt"] == 2
    messages = [e["message"] for e in c.get(f"/api/runs/{run['id']}/events").json()]
    assert any("lease of attempt 1 expired" in m for m in messages)
    assert any("queued again for attempt 2" in m for m in messages)
    # The stale attempt can no longer write anything but late metric points (fill-only).
    rid = run["id"]
    writes: list[tuple[str, dict[str, object]]] = [
        ("heartbeat", {"step": 9}),
        ("finish", {"status": "succeeded"}),
        ("stage", {"stage": "train"}),
        ("checklist", {"key": "data.ready"}),
        ("events", {"message": "x"}),
    ]
    for path, body in writes:
        r = c.post(f"/api/runs/{rid}/{path}", json={"attempt": 1, **body})
        assert r.status_code == 409, (path, r.text)
    # Metrics of attempt 1 survive, and attempt 2 writes fine.
    assert c.get(f"/api/runs/{rid}/metrics", params={"key": "loss"}).json()["total"] == 3
    assert c.post(f"/api/runs/{rid}/heartbeat", json={"attempt": 2, "step": 3}).status_code == 200


def test_background_sweeper_requeues_without_any_claim(tmp_path) -> None:
    s = make_settings(tmp_path, lease_seconds=0.2, lease_sweep_seconds=0.1)
    with TestClient(create_app(s), headers={"Authorization": f"Bearer {s.token}"}) as c:
        run = create_run(c)
        claim(c, register(c))
        deadline = time.monotonic() + 5
        while c.get(f"/api/runs/{run['id']}").json()["status"] != "queued":
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_heartbeat_extends_lease_and_delivers_commands_once(client) -> None:
    run = create_run(client, hub_repo="user/results")
    claim(client, register(client))
    rid = run["id"]
    cmd = client.post(f"/api/runs/{rid}/backup")
    assert cmd.status_code == 202 and cmd.json()["kind"] == "backup" and cmd.json()["state"] == "queued"
    assert client.post(f"/api/runs/{rid}/backup").json()["id"] == cmd.json()["id"]  # not duplicated
    hb = client.post(f"/api/runs/{rid}/heartbeat", json={"attempt": 1, "step": 42, "steps_per_s": 3.5})
    assert hb.status_code == 200
    assert hb.json()["commands"] == [{"id": cmd.json()["id"], "kind": "backup"}]
    assert hb.json()["lease_expires_at"] > time.time() + 50
    again = client.post(f"/api/runs/{rid}/heartbeat", json={"attempt": 1, "step": 43})
    assert again.json()["commands"] == []
    r = client.post(
        f"/api/runs/{rid}/commands/{cmd.json()['id']}", json={"attempt": 1, "state": "done", "detail": "pushed step 40"}
    )
    assert r.status_code == 200
    detail = client.get(f"/api/runs/{rid}").json()
    assert detail["step"] == 43 and detail["commands"][0]["state"] == "done"


def test_metrics_are_idempotent_and_overwrite(client) -> None:
    run = create_run(client)
    claim(client, register(client))
    url = f"/api/runs/{run['id']}/metrics"
    batch = {"attempt": 1, "points": _points(100)}
    assert client.post(url, json=batch).json() == {"accepted": 100, "stale": False}
    assert client.post(url, json=batch).json() == {"accepted": 100, "stale": False}
    assert client.get(url, params={"key": "loss"}).json()["total"] == 100
    changed = {"attempt": 1, "points": [{"key": "loss", "step": 5, "value": -7.0, "wall_time": 1.0}]}
    client.post(url, json=changed)
    series = client.get(url, params={"key": "loss"}).json()
    assert series["total"] == 100 and series["values"][5] == -7.0
    assert client.get(url).json() == {"keys": ["loss"]}
    bad = {"attempt": 1, "points": [{"key": "loss", "step": 1, "value": "NaN", "wall_time": 1.0}]}
    assert client.post(url, json=bad).status_code == 422


def test_cancel_queued_at_once_and_running_through_the_worker(client) -> None:
    queued = create_run(client)
    r = client.post(f"/api/runs/{queued['id']}/cancel")
    assert r.json() == {"status": "cancelled", "command": None}
    running = create_run(client)
    worker = register(client)
    assert claim_run(client, worker)["run_id"] == running["id"]  # the cancelled run is skipped
    rid = running["id"]
    r = client.post(f"/api/runs/{rid}/cancel").json()
    assert r["status"] == "running" and r["command"]["kind"] == "cancel"
    hb = client.post(f"/api/runs/{rid}/heartbeat", json={"attempt": 1, "step": 1}).json()
    assert [c["kind"] for c in hb["commands"]] == ["cancel"]
    assert client.post(f"/api/runs/{rid}/finish", json={"attempt": 1, "status": "cancelled"}).status_code == 200
    detail = client.get(f"/api/runs/{rid}").json()
    assert detail["status"] == "cancelled" and detail["commands"][0]["state"] == "done"
    assert client.post(f"/api/runs/{rid}/cancel").status_code == 409
    assert client.post(f"/api/runs/{rid}/backup").status_code == 409


def test_retry_only_from_an_ending_and_resumes_with_next_attempt(client) -> None:
    run = create_run(client)
    rid = run["id"]
    assert client.post(f"/api/runs/{rid}/retry").status_code == 409  # queued
    worker = register(client)
    claim(client, worker)
    assert client.post(f"/api/runs/{rid}/retry").status_code == 409  # running
    client.post(f"/api/runs/{rid}/finish", json={"attempt": 1, "status": "failed", "error": "CUDA OOM"})
    assert client.get(f"/api/runs/{rid}").json()["error"] == "CUDA OOM"
    r = client.post(f"/api/runs/{rid}/retry")
    assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["error"] is None
    assert claim_run(client, worker)["attempt"] == 2


def _finished_run(client, score: float = 97.0) -> int:
    run = create_run(client, paper=True)  # its results.md row is compared with the paper
    rid = run["id"]
    claim(client, register(client))
    a = {"attempt": 1}
    assert client.post(f"/api/runs/{rid}/stage", json={**a, "stage": "smoke"}).status_code == 200
    assert (
        client.post(
            f"/api/runs/{rid}/checklist", json={**a, "key": "train.start", "detail": "started fresh"}
        ).status_code
        == 200
    )
    assert client.post(f"/api/runs/{rid}/checklist", json={**a, "key": "bogus"}).status_code == 422
    ckpt = {**a, "step": 500, "size": 1234, "sha256": SHA, "backup_state": "uploading"}
    assert client.post(f"/api/runs/{rid}/checkpoints", json=ckpt).status_code == 200
    bad = client.post(f"/api/runs/{rid}/checkpoints", json={**ckpt, "hub_url": "javascript:alert(1)"})
    assert bad.status_code == 422, "only Hub links may reach the page's href"
    ckpt.update(backup_state="hub", hub_url="https://huggingface.co/x")
    assert client.post(f"/api/runs/{rid}/checkpoints", json=ckpt).status_code == 200
    client.post(f"/api/runs/{rid}/metrics", json={**a, "points": _points(10)})
    ev = {
        **a,
        "step": 1000,
        "kind": "final",
        "score_mean": score,
        "score_std": 2.0,
        "returns": [3000.0],
        "scores": [score],
        "n_envs": 1,
        "n_episodes": 1,
        "latency_ms": 12.5,
    }
    assert client.post(f"/api/runs/{rid}/evaluations", json=ev).status_code == 200
    client.post(f"/api/runs/{rid}/events", json={**a, "level": "warning", "message": "hello"})
    assert client.post(f"/api/runs/{rid}/finish", json={**a, "status": "succeeded"}).status_code == 200
    return rid


def test_export_and_results_markdown(client) -> None:
    rid = _finished_run(client)
    detail = client.get(f"/api/runs/{rid}").json()
    assert detail["status"] == "succeeded" and detail["stage"] == "smoke"
    [ckpt] = detail["checkpoints"]
    assert ckpt["backup_state"] == "hub" and ckpt["backed_up_at"] and ckpt["hub_url"] == "https://huggingface.co/x"
    start = next(i for i in detail["checklist"] if i["key"] == "train.start")
    assert start["detail"] == "started fresh" and start["verified_at"]
    assert detail["metrics"]["loss"]["step"] == 9
    export = client.get(f"/api/runs/{rid}/export").json()
    assert set(export) >= {"run", "config", "metrics", "checkpoints", "evaluations", "events"}
    assert len(export["metrics"]["loss"]) == 10 and export["metrics"]["loss"][0] == [0, 1.0, 1000.0]
    assert export["evaluations"][0]["score_mean"] == 97.0
    assert any(e["message"] == "hello" and e["level"] == "warning" for e in export["events"])
    md = client.get("/api/results.md")
    assert md.headers["content-type"].startswith("text/markdown")
    lines = md.text.strip().splitlines()
    assert lines[0].startswith("| task | variant | seeds (n) | mine | paper | difference | agreement |")
    assert lines[2].startswith(
        "| hopper-medium-v2 | R1 | 0 (1) | 97.0 ± 2.0 (std over 1 episode, one run) "
        "| 99.5 ± 0.7 (s.e. over 5 seeds) | -2.5 | one seed:"
    )


def test_downsampling_keeps_extremes_ends_and_bound(client) -> None:
    run = create_run(client)
    rid, n = run["id"], 100_000
    values = [math.sin(i / 500) for i in range(n)]
    values[31_337], values[77_777] = 50.0, -50.0  # single-step spikes
    with client.app.state.db.write() as session:
        metrics.upsert_points(
            session,
            rid,
            ({"key": "loss", "step": 10 + i, "value": v, "wall_time": float(i)} for i, v in enumerate(values)),
            notify=False,
        )
    for max_points in (4, 101, 500, 2000):
        s = client.get(f"/api/runs/{rid}/metrics", params={"key": "loss", "max_points": max_points}).json()
        assert s["total"] == n and s["downsampled"] and len(s["steps"]) <= max_points
        assert s["steps"] == sorted(s["steps"]) and s["steps"][0] == 10 and s["steps"][-1] == n + 9
        assert 50.0 in s["values"] and -50.0 in s["values"]
    s = client.get(f"/api/runs/{rid}/metrics", params={"key": "loss", "max_points": 2000}).json()
    assert len(s["steps"]) >= 1900  # min and max of each bucket: the curve keeps its shape
    buckets = (2000 - 2) // 2
    for b in (0, 123, buckets - 1):
        lo, hi = 10 + n * b // buckets, 10 + n * (b + 1) // buckets
        chunk = values[lo - 10 : hi - 10]
        assert min(chunk) in s["values"] and max(chunk) in s["values"]
    assert client.get(f"/api/runs/{rid}/metrics", params={"key": "nope"}).status_code == 404
