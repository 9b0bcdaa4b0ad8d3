"""A fleet on one server (issue 20), as SkyPilot would run it but on this machine: a server on
PostgreSQL and three real worker processes with their own work folders, sharing only a
backup folder. A sweep is spread over them with no run claimed twice; a worker killed
mid-run loses its run to the queue and another worker resumes it from the backup; a worker
asked to stop checkpoints its run, which is queued again at once, and exits; the fleet stop
ends the rest; the workers page and API show each of those states."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import pytest

from tests.app_helpers import start_server, stop_server, wait_for
from tests.test_worker_e2e import TASK, loss_steps, start_worker, stop, tiny_run_config

pytestmark = [pytest.mark.postgres, pytest.mark.slow]  # three trainings at once: minutes on 2 cores

LEASE, STEPS, SEEDS = 4, 150, 4


def runs(api: httpx.Client) -> list[dict]:
    return api.get("/api/runs").json()


def fleet(api: httpx.Client) -> dict[str, dict]:
    return {w["name"]: w for w in api.get("/api/workers").json()}


def claims(api: httpx.Client, run_id: int) -> list[tuple[int, str]]:
    """(attempt, worker name) of every claim in the run's event log."""
    found = [
        re.fullmatch(r"attempt (\d+) claimed by worker (\S+)", e["message"])
        for e in api.get(f"/api/runs/{run_id}/events").json()
    ]
    return [(int(m.group(1)), m.group(2)) for m in found if m]


def test_three_workers_share_a_sweep_survive_a_kill_and_stop_on_request(
    tmp_path: Path, dataset_cache: Path, postgres_url: str
) -> None:
    server = start_server(tmp_path / "server", database_url=postgres_url, lease_seconds=LEASE)
    api = server.client()
    config = {**tiny_run_config(STEPS), "eval_every": 0, "backup_dir": str(tmp_path / "backups"), "backup_every": 50}
    r = api.post(
        "/api/sweeps",
        json={"name": "fleet", "tasks": [TASK], "seeds": list(range(SEEDS)), "variants": ["R1"], "config": config},
    )
    assert r.status_code == 201, r.text
    sweep_id = r.json()["id"]
    names = ("w1", "w2", "w3")
    procs = {n: start_worker(server, tmp_path / n, dataset_cache) for n in names}
    try:
        wait_for(lambda: sum(r["status"] == "running" for r in runs(api)) == 3, 300, "three runs at once")
        held = {w["run"]["id"]: name for name, w in fleet(api).items() if w["run"]}
        assert sorted(held.values()) == sorted(names), "each worker holds one run"
        sweep = api.get(f"/api/sweeps/{sweep_id}").json()["progress"]
        assert sweep["workers"] == 3

        # w1 dies once its run has a backed-up checkpoint
        victim = next(rid for rid, name in held.items() if name == "w1")
        wait_for(
            lambda: any(c["backup_state"] == "hub" for c in api.get(f"/api/runs/{victim}").json()["checkpoints"]),
            300,
            "w1's first backup",
        )
        procs["w1"].send_signal(signal.SIGKILL)
        procs["w1"].wait()
        wait_for(lambda: fleet(api)["w1"]["status"] == "lost", 30, "w1 to show as lost")

        # w2 is asked to stop mid-run
        w2_run = fleet(api)["w2"]["run"]
        if w2_run is not None:
            assert api.post(f"/api/workers/{fleet(api)['w2']['id']}/stop").json()["status"] == "stopping"
            assert procs["w2"].wait(300) == 0, "a stopped worker exits cleanly (a managed job then ends)"
        wait_for(lambda: all(r["status"] == "succeeded" for r in runs(api)), 600, "w3 to finish the sweep")

        by_id = {r["id"]: r for r in runs(api)}
        assert by_id[victim]["attempt"] >= 2
        for rid in by_id:
            claimed = claims(api, rid)
            assert [a for a, _ in claimed] == list(range(1, by_id[rid]["attempt"] + 1)), "each attempt claimed once"
            assert loss_steps(api, rid) == list(range(10, STEPS + 1, 10)), "every logged step exactly once"
        start = next(i for i in api.get(f"/api/runs/{victim}").json()["checklist"] if i["key"] == "train.start")
        assert "resumed" in start["detail"] and "step 50" in start["detail"], start["detail"]
        if w2_run is not None:
            events = [e["message"] for e in api.get(f"/api/runs/{w2_run['id']}/events").json()]
            assert any("stopped at a checkpoint" in m for m in events), events

        page = api.get("/workers")
        assert page.status_code == 200 and all(n in page.text for n in names)

        assert api.post("/api/workers/stop").status_code == 200
        assert procs["w3"].wait(120) == 0
        states = {n: w["status"] for n, w in fleet(api).items()}
        assert states == {"w1": "lost", "w2": "exited", "w3": "exited"} or states["w2"] == "exited", states
    finally:
        for proc in procs.values():
            stop(proc)
        stop_server(server)
