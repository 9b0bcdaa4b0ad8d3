"""The fleet through the API (issue 20), on a real SQLite file: where workers run, what they
hold, when they count as lost or exited, a cap and a stop, and what a sweep's progress says
about the workers on it. The worker processes' side is tests/test_fleet_e2e.py."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.models import Worker
from tests.app_helpers import app_of, claim_run, create_run, register
from tests.test_multi_run_api import sweep


def workers(client: TestClient) -> dict[str, dict]:
    return {w["name"]: w for w in client.get("/api/workers").json()}


def heartbeat(client: TestClient, rid: int, attempt: int, step: int = 5, speed: float | None = 2.0) -> dict:
    r = client.post(f"/api/runs/{rid}/heartbeat", json={"attempt": attempt, "step": step, "steps_per_s": speed})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_fleet_lists_where_each_worker_runs_and_what_it_holds(client: TestClient) -> None:
    r = client.post(
        "/api/workers/register",
        json={
            "name": "sky1",
            "host": "ip-10-0-0-1",
            "device": "cuda",
            "gpu_name": "Tesla T4",
            "provider": "skypilot:aws/us-east-1",
        },
    )
    sky1 = r.json()["worker_id"]
    idle = register(client, "idle")
    rid = create_run(client)["id"]
    got = claim_run(client, sky1)
    heartbeat(client, rid, got["attempt"], step=7, speed=3.5)
    fleet = workers(client)
    assert fleet["sky1"]["provider"] == "skypilot:aws/us-east-1" and fleet["sky1"]["gpu_name"] == "Tesla T4"
    assert fleet["sky1"]["status"] == "working" and fleet["sky1"]["runs_claimed"] == 1
    assert fleet["sky1"]["run"]["id"] == rid and fleet["sky1"]["run"]["step"] == 7
    assert fleet["sky1"]["run"]["steps_per_s"] == 3.5
    assert fleet["idle"]["status"] == "idle" and fleet["idle"]["run"] is None and fleet["idle"]["provider"] is None

    with app_of(client).state.db.write() as session:  # silent for longer than a lease
        w = session.get(Worker, idle)
        w.last_seen -= app_of(client).state.settings.lease_seconds + 1
        session.add(w)
    assert workers(client)["idle"]["status"] == "lost"
    assert client.post(f"/api/workers/{idle}/exit").status_code == 200
    assert workers(client)["idle"]["status"] == "exited", "gone on purpose, not lost"

    page = client.get("/workers")
    assert page.status_code == 200 and "skypilot:aws/us-east-1" in page.text and "Tesla T4" in page.text
    assert "worker-status worker-lost" not in page.text and "worker-status worker-exited" in page.text
    assert f"/runs/{rid}" in page.text


def test_a_cap_lets_a_worker_finish_its_run_then_tells_it_to_exit(client: TestClient) -> None:
    wid = register(client, "capped")
    r = client.patch(f"/api/workers/{wid}", json={"max_runs": 1})
    assert r.status_code == 200 and r.json()["max_runs"] == 1
    first, second = create_run(client)["id"], create_run(client)["id"]
    got = claim_run(client, wid)
    assert got["run_id"] == first
    client.post(f"/api/runs/{first}/finish", json={"attempt": got["attempt"], "status": "succeeded", "error": None})
    r = client.post(f"/api/workers/{wid}/claim")
    assert r.status_code == 410 and "cap of 1 run" in r.json()["detail"]
    assert workers(client)["capped"]["status"] == "exited"
    assert client.get(f"/api/runs/{second}").json()["status"] == "queued", "left for another worker"
    assert client.patch(f"/api/workers/{wid}", json={"max_runs": -1}).status_code == 422
    assert client.patch("/api/workers/nope", json={"max_runs": 3}).status_code == 404


def test_a_stop_hands_the_run_back_at_once_and_the_worker_exits(client: TestClient) -> None:
    busy, idle = register(client, "busy"), register(client, "idle")
    rid = create_run(client)["id"]
    got = claim_run(client, busy)
    r = client.post("/api/workers/stop")
    assert r.status_code == 200 and sorted(r.json()["stopped"]) == sorted([busy, idle])
    assert client.post("/api/workers/stop").json()["stopped"] == [], "asked once"
    assert client.post(f"/api/workers/{idle}/claim").status_code == 410, "an idle worker exits at its next claim"
    assert workers(client)["busy"]["status"] == "stopping"

    commands = heartbeat(client, rid, got["attempt"])["commands"]
    assert [c["kind"] for c in commands] == ["stop"]
    r = client.post(
        f"/api/runs/{rid}/commands/{commands[0]['id']}",
        json={"attempt": got["attempt"], "state": "done", "detail": "stopped at a checkpoint"},
    )
    assert r.status_code == 200, r.text
    run = client.get(f"/api/runs/{rid}").json()
    assert run["status"] == "queued" and run["attempt"] == 1, "queued again without waiting for the lease"
    messages = [e["message"] for e in client.get(f"/api/runs/{rid}/events").json()]
    assert any("stopped at a checkpoint" in m for m in messages), messages
    assert client.post(f"/api/workers/{busy}/claim").status_code == 410
    fresh = register(client, "fresh")
    assert claim_run(client, fresh)["attempt"] == 2, "another worker resumes it"


def test_a_run_that_ends_before_its_stop_takes_effect_leaves_the_stop_done(client: TestClient) -> None:
    wid = register(client)
    rid = create_run(client)["id"]
    got = claim_run(client, wid)
    assert client.post(f"/api/workers/{wid}/stop").json()["status"] == "stopping"
    client.post(f"/api/runs/{rid}/finish", json={"attempt": got["attempt"], "status": "succeeded", "error": None})
    messages = [e["message"] for e in client.get(f"/api/runs/{rid}/events").json()]
    assert not any("stop command" in m and "error" in m for m in messages)
    assert client.get(f"/api/runs/{rid}").json()["status"] == "succeeded"


def test_a_sweep_counts_its_workers_and_its_eta_uses_their_combined_speed(client: TestClient) -> None:
    speeds = (2.0, 3.0)
    s = sweep(client, ["hopper-medium-v2"], [0, 1, 2])
    a, b = register(client, "a"), register(client, "b")
    for wid, speed in zip((a, b), speeds):
        got = claim_run(client, wid)
        heartbeat(client, got["run_id"], got["attempt"], step=0, speed=speed)
    progress = client.get(f"/api/sweeps/{s['id']}").json()["progress"]
    assert progress["workers"] == 2 and progress["combined_steps_per_s"] == sum(speeds)
    assert progress["eta_s"] == pytest.approx(progress["steps_left"] / sum(speeds))
    page = client.get(f"/sweeps/{s['id']}").text
    assert "2 workers on it" in page and "5.0 steps/s its" in page
