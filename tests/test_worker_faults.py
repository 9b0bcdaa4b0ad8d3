"""A run survives what happens to it (issue 10), on CPU with a real uvicorn server and real
worker processes: a diverging loss, a write that cannot be sent, a server outage longer
than the lease, an attempt fenced off mid-training, a work dir that outlived its server."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx

from app.protocol import SYSTEM_PREFIX, EvaluationRequest, MetricPointIn
from tests.app_helpers import (
    ROOT,
    LiveServer,
    claim,
    claim_run,
    create_run,
    register,
    start_server,
    stop_server,
    subprocess_env,
    wait_for,
)
from tests.test_worker_e2e import TASK, loss_steps, restart_server, start_worker, stop, tiny_run_config
from worker.client import ServerClient
from worker.executor import RunExecutor
from worker.outbox import Outbox


def create(api: httpx.Client, steps: int, **overrides: object) -> dict:
    r = api.post(
        "/api/runs",
        json={"task": TASK, "name": "faults", "config": {**tiny_run_config(steps), "eval_every": 0, **overrides}},
    )
    assert r.status_code == 201, r.text
    return r.json()


def run_of(api: httpx.Client, run_id: int) -> dict:
    return api.get(f"/api/runs/{run_id}").json()


def messages(api: httpx.Client, run_id: int) -> list[str]:
    return [e["message"] for e in api.get(f"/api/runs/{run_id}/events").json()]


def ended(api: httpx.Client, run_id: int) -> bool:
    return run_of(api, run_id)["status"] in ("succeeded", "failed", "cancelled")


def port_of(server: LiveServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def points_held(api: httpx.Client, run_id: int, upto: int, every: int) -> tuple[int, int]:
    """(points logged, points the server holds) over the training series, for the report."""
    series = api.get(f"/api/runs/{run_id}/export").json()["metrics"]
    keys = [k for k in series if k != "score" and not k.startswith(SYSTEM_PREFIX)]  # system samples: by time
    held = sum(len(series[k]) for k in keys)
    return len(keys) * (upto // every), held


def journaled_steps(journal: Path) -> int:
    """The newest step in the metric writes of an outbox journal."""
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    return max((pt["step"] for _, path, body in entries if path == "metrics" for pt in body["points"]), default=0)


def test_a_write_that_cannot_be_sent_is_reported_and_the_queue_goes_on(live_server: LiveServer, tmp_path: Path) -> None:
    api = live_server.client()
    run_id = create_run(api)["id"]
    claim(api, register(api))
    box = Outbox(ServerClient(live_server.url, live_server.token), run_id, 1, tmp_path / "box")
    try:
        # httpx refuses to encode NaN: before issue 10 this killed the delivery thread
        box.post("metrics", {"points": [{"key": "loss0", "step": 10, "value": float("nan"), "wall_time": 1.0}]})
        box.metrics(20, {"loss0": float("nan"), "loss1": 0.5}, 2.0)
        box.post("events", {"level": "info", "message": "written after the bad one"})
        assert box.flush(timeout=30), "the outbox is stuck behind one bad write"
    finally:
        box.close(timeout=5)
    loss0 = api.get(f"/api/runs/{run_id}/metrics", params={"key": "loss0"}).json()
    assert loss0["nonfinite"] == {"total": 1, "steps": [20], "values": ["nan"], "wall_times": [2.0]}
    loss1 = api.get(f"/api/runs/{run_id}/metrics", params={"key": "loss1"}).json()
    assert loss1["steps"] == [20] and loss1["values"] == [0.5]
    said = messages(api, run_id)
    assert "written after the bad one" in said
    assert any(m.startswith("worker could not deliver a metrics write (ValueError") for m in said)


def test_points_an_earlier_attempt_never_delivered_go_out_with_the_next(tmp_path: Path) -> None:
    """The worker process of attempt 1 died with points in its journal; attempt 2 of the same
    run, in the same folder, sends them (they fill steps only it has not logged)."""
    server = start_server(tmp_path / "server", lease_seconds=1)
    try:
        api = server.client()
        run_id = create_run(api)["id"]
        assert claim_run(api, register(api, "first"))["attempt"] == 1
        folder = tmp_path / "w" / "runs" / "the-run"
        code = (
            "import sys, time; from pathlib import Path; from worker.client import ServerClient; "
            "from worker.outbox import Outbox; "
            f"box = Outbox(ServerClient('http://127.0.0.1:9', 't'), {run_id}, 1, Path(sys.argv[1])); "
            "box.metrics(10, {'loss0': 1.0}, 1.0); box.metrics(20, {'loss0': 2.0}, 2.0); "
            "print('journaled', flush=True); time.sleep(60)"
        )
        doomed = subprocess.Popen(
            [sys.executable, "-c", code, str(folder)],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert doomed.stdout is not None  # stdout=PIPE
        assert doomed.stdout.readline().strip() == "journaled"
        doomed.kill()  # the server was unreachable, then the worker died
        doomed.wait()
        time.sleep(1.5)  # the lease runs out
        assert claim_run(api, register(api, "second"))["attempt"] == 2
        api.post(
            f"/api/runs/{run_id}/metrics",
            json={"attempt": 2, "points": [{"key": "loss0", "step": 20, "value": 5.0, "wall_time": 3.0}]},
        )
        box = Outbox(ServerClient(server.url, server.token), run_id, 2, folder)
        assert box.close(timeout=30)
        assert not box.lost.is_set(), "late points of attempt 1 do not fence off attempt 2"
        series = api.get(f"/api/runs/{run_id}/metrics", params={"key": "loss0"}).json()
        assert list(zip(series["steps"], series["values"])) == [(10, 1.0), (20, 5.0)]
    finally:
        stop_server(server)


def test_a_diverging_run_stops_naming_step_and_loss(tmp_path: Path, dataset_cache: Path) -> None:
    server = start_server(tmp_path / "server")
    api = server.client()
    run_id = create(api, 200)["id"]
    worker = start_worker(
        server, tmp_path / "w", dataset_cache, module="tests.diverging_worker", DLITE_TEST_NAN_AT="25"
    )
    try:
        wait_for(lambda: ended(api, run_id), 180, "the diverging run to end (not hang)")
        run = run_of(api, run_id)
        assert run["status"] == "failed"
        assert "non-finite at step 30" in run["error"] and "loss0 = nan" in run["error"]
        assert "on_nonfinite" in run["error"], "the error says how to go on"
        series = api.get(f"/api/runs/{run_id}/metrics", params={"key": "loss0"}).json()
        assert series["steps"] == [10, 20] and series["nonfinite"]["steps"] == [30]
        events = api.get(f"/api/runs/{run_id}/events").json()
        assert {"level": "warning", "message": "loss0 became non-finite (nan) at step 30"} in [
            {k: e[k] for k in ("level", "message")} for e in events
        ]
        assert not run["checkpoints"], "diverged weights are not kept as the newest checkpoint"
    finally:
        stop(worker)
        stop_server(server)


def test_a_run_set_to_continue_trains_through_non_finite_losses_and_keeps_them(
    tmp_path: Path, dataset_cache: Path
) -> None:
    """on_nonfinite=continue: the log intervals ending at steps 30 and 50 report loss0 NaN and
    loss1 inf; the run finishes, the server holds those points at their steps beside every
    finite one, and the first non-finite step is warned about once, not at every bad log."""
    steps, every = 70, 10
    server = start_server(tmp_path / "server")
    api = server.client()
    run_id = create(api, steps, on_nonfinite="continue")["id"]
    worker = start_worker(
        server, tmp_path / "w", dataset_cache, module="tests.diverging_worker", DLITE_TEST_SPIKES="30,50"
    )
    try:
        wait_for(lambda: ended(api, run_id), 180, "the run to end")
        run = run_of(api, run_id)
        assert run["status"] == "succeeded", run["error"]
        assert run["step"] == steps and not run["error"]

        logged = list(range(every, steps + 1, every))
        finite = [s for s in logged if s not in (30, 50)]
        for key, label in (("loss0", "nan"), ("loss1", "inf")):
            series = api.get(f"/api/runs/{run_id}/metrics", params={"key": key}).json()
            assert series["steps"] == finite, key
            assert all(math.isfinite(v) for v in series["values"]), key
            assert series["nonfinite"]["steps"] == [30, 50] and series["nonfinite"]["values"] == [label] * 2, key
        for key in ("loss2", "invdyn_loss", "lr"):  # untouched series: every point, none non-finite
            series = api.get(f"/api/runs/{run_id}/metrics", params={"key": key}).json()
            assert series["steps"] == logged and not series["nonfinite"]["steps"], key
        charts = api.get(f"/api/runs/{run_id}/charts").json()["series"]  # what the run page draws
        assert charts["loss0"]["nonfinite"]["steps"] == [30, 50] and charts["loss0"]["steps"] == finite
        export = api.get(f"/api/runs/{run_id}/export").json()
        assert {k: [(s, v) for s, v, _ in rows] for k, rows in export["nonfinite_metrics"].items()} == {
            "loss0": [(30, "nan"), (50, "nan")],
            "loss1": [(30, "inf"), (50, "inf")],
        }
        assert [s for s, _, _ in export["metrics"]["loss0"]] == finite
        assert loss_steps(api, run_id) == finite

        warnings = [e["message"] for e in api.get(f"/api/runs/{run_id}/events").json() if e["level"] == "warning"]
        going_on = [m for m in warnings if "on_nonfinite=continue" in m]
        assert going_on == [
            ("loss became non-finite at step 30 (loss0 = nan, loss1 = inf); training goes on (on_nonfinite=continue)")
        ], warnings
        for key, label in (("loss0", "nan"), ("loss1", "inf")):  # the server's: the first point of each series
            assert [m for m in warnings if m.startswith(f"{key} became non-finite")] == [
                f"{key} became non-finite ({label}) at step 30"
            ], warnings
        assert not any("step 50" in m for m in warnings), "the later spike is not warned about again"
        assert {c["step"] for c in run["checkpoints"]} >= {50, steps}, "checkpoints are kept when going on"
    finally:
        stop(worker)
        stop_server(server)


def test_server_down_longer_than_the_lease_keeps_the_attempt_and_every_point(
    tmp_path: Path, dataset_cache: Path
) -> None:
    lease, steps = 6, 150
    data_dir = tmp_path / "server"
    server = start_server(data_dir, lease_seconds=lease)
    api = server.client()
    run_id = create(api, steps)["id"]
    worker = start_worker(server, tmp_path / "w", dataset_cache)
    try:
        wait_for(lambda: run_of(api, run_id)["stage"] == "train" and run_of(api, run_id)["step"] >= 50, 120, "training")
        server.process.kill()
        server.process.wait()
        time.sleep(lease * 1.5)
        server = restart_server(data_dir, server, port_of(server), lease_seconds=lease)
        api = server.client()
        for _ in range(10):  # list calls requeue expired leases; the worker's heartbeat is up to lease/3 away
            # never requeued; on a fast machine the worker may finish during the outage and
            # deliver everything (finish included) as soon as the server is back
            assert [r["status"] for r in api.get("/api/runs").json()] in (["running"], ["succeeded"])
            time.sleep(0.2)
        wait_for(lambda: ended(api, run_id), 240, "the run")
        run = run_of(api, run_id)
        assert run["status"] == "succeeded" and run["attempt"] == 1, "the live worker kept its run"
        logged, held = points_held(api, run_id, steps, 10)
        print(f"\nserver down {lease * 1.5:.0f} s (lease {lease} s): metric points logged {logged}, held {held}")
        assert loss_steps(api, run_id) == list(range(10, steps + 1, 10)), "every logged step exactly once"
        assert held == logged
    finally:
        stop(worker)
        stop_server(server)


def test_a_run_that_ends_while_the_server_is_down_is_not_run_again(tmp_path: Path, dataset_cache: Path) -> None:
    """The worker finishes the whole run during the outage and its writes wait in the outbox,
    whose retry is then up to 10 s away, longer than the lease the restarted server grants:
    the worker's heartbeat keeps the lease until the backlog and the finish are delivered,
    so the run is not requeued and run again as attempt 2."""
    lease, steps = 4, 40
    data_dir = tmp_path / "server"
    server = start_server(data_dir, lease_seconds=lease)
    api = server.client()
    run_id = create(api, steps)["id"]
    worker = start_worker(server, tmp_path / "w", dataset_cache)
    try:
        wait_for(lambda: run_of(api, run_id)["stage"] == "train" and run_of(api, run_id)["step"] >= 10, 120, "training")
        server.process.kill()
        server.process.wait()
        journals = tmp_path / "w" / "runs"
        wait_for(
            lambda: any('"finish"' in j.read_text() for j in journals.glob("*/outbox-1.jsonl")),
            120,
            "the run to end offline",
        )
        time.sleep(12)  # the outbox's retry backs off to its 10 s ceiling
        server = restart_server(data_dir, server, port_of(server), lease_seconds=lease)
        api = server.client()
        # the runs list, as the dashboard polls it, requeues expired leases
        wait_for(
            lambda: api.get("/api/runs").json()[0]["status"] not in ("running", "queued"), 120, "the backlog to arrive"
        )
        run = run_of(api, run_id)
        assert run["status"] == "succeeded" and run["attempt"] == 1, (run["status"], run["attempt"], run["error"])
        assert loss_steps(api, run_id) == list(range(10, steps + 1, 10)), "every logged step exactly once"
    finally:
        stop(worker)
        stop_server(server)


def test_a_fenced_off_attempt_loses_no_point_and_its_last_checkpoint_is_listed(
    tmp_path: Path, dataset_cache: Path
) -> None:
    steps = 150
    data_dir, work = tmp_path / "server", tmp_path / "w"
    server = start_server(data_dir, lease_seconds=6)
    api = server.client()
    run = create(api, steps, keep_local=2)
    run_id = run["id"]
    worker = start_worker(server, work, dataset_cache)
    try:
        wait_for(lambda: run_of(api, run_id)["stage"] == "train" and run_of(api, run_id)["step"] >= 50, 120, "training")
        killed_at = run_of(api, run_id)["step"]
        server.process.kill()
        server.process.wait()
        journal = work / "runs" / run["uuid"] / "outbox-1.jsonl"
        wait_for(
            lambda: journaled_steps(journal) >= killed_at + 20,
            120,
            "the worker to log two more intervals while the server is down",
        )
        # What the server of issue 10 did: it expired the lease and queued the run again, so
        # every write of attempt 1 is refused from now on and attempt 2 resumes.
        with sqlite3.connect(data_dir / "dlite.db") as db:
            db.execute(
                "UPDATE runs SET status = 'queued', worker_id = NULL, lease_expires_at = NULL WHERE id = ?", (run_id,)
            )
        server = restart_server(data_dir, server, port_of(server), lease_seconds=6)
        api = server.client()
        wait_for(lambda: ended(api, run_id), 240, "the run")
        run = run_of(api, run_id)
        assert run["status"] == "succeeded" and run["attempt"] == 2
        start = next(i for i in run["checklist"] if i["key"] == "train.start")["detail"]
        resumed_from = int(start.split("step ")[1].split()[0])
        logged, held = points_held(api, run_id, steps, 10)
        print(
            f"\nattempt 1 fenced off, attempt 2 resumed from step {resumed_from}: "
            f"metric points logged {logged}, held {held}"
        )
        assert loss_steps(api, run_id) == list(range(10, steps + 1, 10)), "every logged step exactly once"
        assert held == logged
        listed = {c["step"]: c for c in run["checkpoints"]}
        assert resumed_from in listed, "the checkpoint attempt 1 saved after its 409 is listed"
        on_disk = {int(p.name[5:13]) for p in (work / "runs" / run["uuid"] / "checkpoints").glob("ckpt_*.pt")}
        assert {s for s, c in listed.items() if not c["pruned"]} == on_disk
        assert any(c["pruned"] for c in listed.values()), "keep_local=2 pruned the older ones"
    finally:
        stop(worker)
        stop_server(server)


def test_a_work_dir_that_outlived_its_server_is_not_mixed_in(tmp_path: Path, dataset_cache: Path) -> None:
    """A fresh database numbers runs from 1 again; the worker's old run 1 must stay apart.
    A broken checkpoint in the run's own folder is skipped, said in the run's events."""
    work = tmp_path / "w"
    old = work / "runs" / "1"
    old.mkdir(parents=True)
    foreign = [1, "events", {"attempt": 1, "level": "info", "message": "FOREIGN: from another server's run 1"}]
    (old / "outbox-1.jsonl").write_text(json.dumps(foreign) + "\n")
    server = start_server(tmp_path / "server")
    api = server.client()
    run = create(api, 40)
    assert run["id"] == 1
    broken = work / "runs" / run["uuid"] / "checkpoints" / "ckpt_00000030.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"cut short by a crash")
    worker = start_worker(server, work, dataset_cache)
    try:
        wait_for(lambda: ended(api, 1), 180, "the run")
        run = run_of(api, 1)
        assert run["status"] == "succeeded", run["error"]
        said = messages(api, 1)
        assert not any("FOREIGN" in m for m in said), "another run's state leaked into this one"
        assert next(i for i in run["checklist"] if i["key"] == "train.start")["detail"] == "started fresh"
        assert any(m.startswith("skipped a broken checkpoint on resume") and "ckpt_00000030.pt" in m for m in said)
        assert [c["step"] for c in run["checkpoints"]] == [40]
        assert (old / "outbox-1.jsonl").exists(), "the other run's state is left alone"
    finally:
        stop(worker)
        stop_server(server)


def test_a_backup_export_replays_its_non_finite_points_and_missing_evaluations_too(tmp_path: Path) -> None:
    """A fresh server (or one restored from an older snapshot) gets every point of the export
    up to the checkpoint back, the NaN and infinite ones included, and the evaluations it
    lacks, in the form the worker endpoints accept."""
    evaluation = {
        "id": 7,
        "created_at": 1.0,
        "kind": "quick",
        "variant": "R1",
        "score_mean": 12.5,
        "score_std": 1.0,
        "returns": [100.0],
        "scores": [12.5],
        "n_envs": 1,
        "n_episodes": 1,
        "latency_ms": 3.0,
        "latency_ms_1env": 2.0,
        "device": "cpu",
    }
    export = tmp_path / "metrics.json"
    export.write_text(
        json.dumps(
            {
                "metrics": {"loss": [[10, 1.5, 100.0], [20, 1.25, 101.0], [40, 1.0, 103.0]]},
                "nonfinite_metrics": {
                    "loss": [[30, "nan", 102.0]],
                    "invdyn_loss": [[20, "-inf", 101.0], [50, "inf", 104.0]],
                },
                "evaluations": [{**evaluation, "step": s} for s in (20, 40, 60)],
            }
        )
    )
    posted: list[tuple[str, dict]] = []
    fake = SimpleNamespace(
        outbox=SimpleNamespace(post=lambda kind, body: posted.append((kind, body))),
        claim=SimpleNamespace(run_id=1),
        client=SimpleNamespace(run=lambda run_id: {"evaluations": [{**evaluation, "step": 20}]}),
    )
    RunExecutor._replay_backup(fake, export, upto=40)  # type: ignore[arg-type]
    points = [MetricPointIn.model_validate(p) for kind, body in posted if kind == "metrics" for p in body["points"]]
    replayed = [
        EvaluationRequest.model_validate({**body, "attempt": 1}) for kind, body in posted if kind == "evaluations"
    ]
    assert [e.step for e in replayed] == [40], "only the one the server lacks, up to the checkpoint"
    assert replayed[0].score_mean == 12.5 and replayed[0].device == "cpu"
    assert sorted((p.key, p.step, p.value, p.nonfinite) for p in points) == [
        ("invdyn_loss", 20, None, "-inf"),
        ("loss", 10, 1.5, None),
        ("loss", 20, 1.25, None),
        ("loss", 30, None, "nan"),
        ("loss", 40, 1.0, None),
    ]
