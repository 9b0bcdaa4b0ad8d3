"""End to end on CPU: a real uvicorn server, real worker processes, a tiny dataset."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.app_helpers import ROOT, LiveServer, start_server, stop_server, subprocess_env, wait_for
from tests.conftest import TINY

TASK = "halfcheetah-medium-expert-v2"


def tiny_run_config(steps: int) -> dict:
    return {
        **TINY,
        "diffusion_gradient_steps": steps,
        "invdyn_gradient_steps": steps,
        "smoke_steps": 10,
        "save_interval": 50,
        "log_interval": 10,
        "eval_every": 100,
        "eval_envs": 2,
        "eval_episodes": 1,
        "num_envs": 2,
        "num_episodes": 1,
        "max_episode_steps": 20,
    }


def start_worker(
    server: LiveServer, work_dir: Path, cache: Path, module: str = "worker.cli", **extra_env: str
) -> subprocess.Popen:
    env = subprocess_env(DLITE_DATASETS=str(cache), DLITE_TOKEN=server.token, **extra_env)
    env.pop("HF_TOKEN", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            "worker",
            "--server",
            server.url,
            "--work-dir",
            str(work_dir),
            "--device",
            "cpu",
            "--name",
            work_dir.name,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def create(api: httpx.Client, steps: int) -> int:
    r = api.post("/api/runs", json={"task": TASK, "name": "e2e", "config": tiny_run_config(steps)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def loss_steps(api: httpx.Client, run_id: int) -> list[int]:
    export = api.get(f"/api/runs/{run_id}/export").json()
    return [step for step, _, _ in export["metrics"]["loss0"]]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_run_goes_through_every_stage(tmp_path: Path, dataset_cache: Path) -> None:
    server = start_server(tmp_path / "server")
    worker = start_worker(
        server, tmp_path / "w1", dataset_cache, DLITE_SYSTEM_METRICS_SECONDS="1", MUJOCO_GL="egl"
    )  # Mesa's software EGL: the final evaluation's episode is filmed
    try:
        api = server.client()
        run_id = create(api, 200)
        wait_for(lambda: api.get(f"/api/runs/{run_id}").json()["status"] in ("succeeded", "failed"), 120, "the run")
        run = api.get(f"/api/runs/{run_id}").json()
        assert run["status"] == "succeeded", run.get("error")
        assert run["step"] == 200, "the run shows its last logged step"
        done = {item["key"] for item in run["checklist"] if item["verified_at"]}
        assert {
            "data.ready",
            "smoke.steps",
            "smoke.checkpoint",
            "smoke.reload",
            "train.start",
            "train.done",
            "eval.done",
            "eval.score",
        } <= done
        assert "smoke.backup" not in done, "no Hub repo configured: must not be ticked"
        assert {c["step"] for c in run["checkpoints"]} >= {150, 200}
        newest = max(run["checkpoints"], key=lambda c: c["step"])  # on this machine: the server serves it
        assert newest["download"] == "server" and newest["local_url"].startswith("file:///")
        got = api.get(f"/api/runs/{run_id}/checkpoints/{newest['step']}/file")
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == newest["sha256"]
        final = [e for e in run["evaluations"] if e["kind"] == "final"]
        assert len(final) == 1 and len(final[0]["returns"]) == 2
        assert any(e["kind"] == "quick" and e["step"] == 100 for e in run["evaluations"])
        video_item = next(i for i in run["checklist"] if i["key"] == "eval.video")
        assert video_item["verified_at"] and not video_item["failed"] and video_item["detail"] == "R1"
        names = {a["name"]: a for a in api.get(f"/api/runs/{run_id}/artifacts").json()}
        assert set(names) == {"R1-final-200.webm", "R1-final-200.plans.json"}, "quick ones are off by default"
        video = api.get(f"/api/runs/{run_id}/artifacts/R1-final-200.webm")
        assert video.headers["content-type"] == "video/webm" and video.content[:4] == b"\x1a\x45\xdf\xa3"
        assert hashlib.sha256(video.content).hexdigest() == names["R1-final-200.webm"]["sha256"]
        plans = api.get(f"/api/runs/{run_id}/artifacts/R1-final-200.plans.json").json()
        assert plans["checkpoint_step"] == 200 and len(plans["states"]) == 21, "20 steps and the reset state"
        assert any(
            "recorded an extra R1 episode of step 200 (final)" in e["message"] and "not counted" in e["message"]
            for e in api.get(f"/api/runs/{run_id}/events").json()
        )
        assert loss_steps(api, run_id) == list(range(10, 201, 10))
        system = api.get(f"/api/runs/{run_id}/system").json()["series"]
        assert system["system/cpu_percent"]["total"] >= 2 and "system/gpu_util_percent" not in system
        assert any(
            "gpu_util_percent" in m and "none: the run uses cpu" in m
            for m in (e["message"] for e in api.get(f"/api/runs/{run_id}/events").json())
        )
        lines = [c["text"] for c in api.get(f"/api/runs/{run_id}/console").json()]
        assert any("final normalised score" in line for line in lines), "the worker's log reaches the console"
        figure = f"/api/runs/{run_id}/figures/normalized_score.png"
        wait_for(lambda: api.get(figure).status_code == 200, 30, "the figures written after evaluation")
        assert api.get(figure).headers["content-type"] == "image/png"
    finally:
        stop(worker)
        stop_server(server)


def test_sigkill_then_another_worker_resumes(tmp_path: Path, dataset_cache: Path) -> None:
    server = start_server(tmp_path / "server", lease_seconds=3)
    api = server.client()
    run_id = create(api, 400)
    first = start_worker(server, tmp_path / "shared", dataset_cache)
    try:
        wait_for(
            lambda: any(c["step"] >= 100 for c in api.get(f"/api/runs/{run_id}").json()["checkpoints"]),
            120,
            "a checkpoint past step 100",
        )
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = api.get(f"/api/runs/{run_id}").json()["step"]
        second = start_worker(server, tmp_path / "shared", dataset_cache)
        try:
            wait_for(lambda: api.get(f"/api/runs/{run_id}").json()["status"] == "succeeded", 180, "the resumed run")
            run = api.get(f"/api/runs/{run_id}").json()
            assert run["attempt"] == 2
            start = next(i for i in run["checklist"] if i["key"] == "train.start")
            resumed_from = int(start["detail"].split("step ")[1].split()[0])
            assert resumed_from >= 100 and killed_at - resumed_from <= 50 + 10, (resumed_from, killed_at)
            steps = loss_steps(api, run_id)
            assert steps == list(range(10, 401, 10)), "every logged step exactly once"
        finally:
            stop(second)
    finally:
        stop(first)
        stop_server(server)


def test_server_outage_loses_no_metric_point(tmp_path: Path, dataset_cache: Path) -> None:
    data_dir = tmp_path / "server"
    server = start_server(data_dir, lease_seconds=30)
    api = server.client()
    run_id = create(api, 1500)
    worker = start_worker(server, tmp_path / "w", dataset_cache)
    try:
        wait_for(
            lambda: (
                api.get(f"/api/runs/{run_id}").json()["stage"] == "train"
                and api.get(f"/api/runs/{run_id}").json()["step"] >= 50
            ),
            120,
            "training",
        )
        stop_server(server)
        time.sleep(4)
        port = int(server.url.rsplit(":", 1)[1])
        server = restart_server(data_dir, server, port)
        api = server.client()
        wait_for(lambda: api.get(f"/api/runs/{run_id}").json()["status"] == "succeeded", 240, "the run")
        assert loss_steps(api, run_id) == list(range(10, 1501, 10))
    finally:
        stop(worker)
        stop_server(server)


def restart_server(data_dir: Path, old: LiveServer, port: int, lease_seconds: float = 30) -> LiveServer:
    """Same data, same port, same token: the worker's URL stays valid."""
    env = subprocess_env(DLITE_TOKEN=old.token, DLITE_LEASE_SECONDS=str(lease_seconds))
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.server", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: httpx.get(f"{old.url}/healthz", timeout=1).status_code == 200, 30, "the server restart")
    return LiveServer(old.url, old.token, proc)


def test_the_device_check_refuses_broken_paths_and_the_run_still_succeeds(tmp_path: Path, dataset_cache: Path) -> None:
    """Real server and worker: the check is on the checklist, in the run's API, page and
    results.md; a broken planning path and a failing training path are warnings naming them
    and their fallback, and the run trains and evaluates on the fallbacks."""
    server = start_server(tmp_path / "server")
    worker = start_worker(  # no GL, whatever the shell's MUJOCO_GL: the final episode cannot be filmed
        server, tmp_path / "w", dataset_cache, module="tests.faulty_path_worker", MUJOCO_GL="disable"
    )
    try:
        api = server.client()
        run_id = create(api, 100)
        wait_for(lambda: api.get(f"/api/runs/{run_id}").json()["status"] in ("succeeded", "failed"), 180, "the run")
        run = api.get(f"/api/runs/{run_id}").json()
        assert run["status"] == "succeeded", run.get("error")
        item = next(i for i in run["checklist"] if i["key"] == "device.check")
        assert item["verified_at"] and not item["failed"]
        assert "refused: train fused, train batched, plan packed" in item["detail"], item["detail"]
        check = run["device_check"]
        assert check["chosen"] == {"train": "eager", "plan": "eager"}
        status = {(p["stage"], p["name"]): (p["status"], p["detail"]) for p in check["paths"]}
        assert status["train", "fused"] == ("failed", "RuntimeError: fused AdamW is not supported on this device")
        assert (
            status["plan", "packed"][0] == "failed" and "differ from the textbook loop's" in status["plan", "packed"][1]
        )
        assert check["projection"]["train_steps"] == 100 and check["projection"]["total_s"] > 0
        warnings = [e["message"] for e in api.get(f"/api/runs/{run_id}/events").json() if e["level"] == "warning"]
        assert any(
            "train path fused refused (RuntimeError: fused AdamW" in w and "using eager instead" in w for w in warnings
        ), warnings
        assert any("plan path packed refused" in w and "using eager instead" in w for w in warnings), warnings
        assert api.get(f"/api/runs/{run_id}/export").json()["device_check"] == check
        assert any(
            "training started fresh, to step 100 on cpu (training path eager, planning path eager)" in e["message"]
            for e in api.get(f"/api/runs/{run_id}/events").json()
        )
        page = api.get(f"/runs/{run_id}").text
        assert "Device check" in page and "fused AdamW is not supported" in page
        video = next(i for i in run["checklist"] if i["key"] == "eval.video")
        assert video["failed"] and "MUJOCO_GL" in video["detail"], "no GL: a ✗ with the fix, the run succeeds"
        [no_video] = [w for w in warnings if w.startswith("no video of the final R1 evaluation at step 100: ")]
        assert all(fix in no_video for fix in ("MUJOCO_GL=disable", "Set MUJOCO_GL=egl", "libegl1", "libgl1-mesa-dri"))
        assert "## Devices" in api.get("/api/results.md").text

        # asked for explicitly, the broken path stops the run before it trains
        r = api.post(
            "/api/runs",
            json={"task": TASK, "name": "fused", "config": {**tiny_run_config(100), "train_accel": "fused"}},
        )
        explicit = r.json()["id"]
        wait_for(lambda: api.get(f"/api/runs/{explicit}").json()["status"] in ("succeeded", "failed"), 120, "it")
        run = api.get(f"/api/runs/{explicit}").json()
        assert (
            run["status"] == "failed"
            and "train_accel=fused failed the device check: RuntimeError: fused AdamW" in run["error"]
        ), run["error"]
        items = {i["key"]: i for i in run["checklist"] if i["verified_at"]}
        assert items["device.check"]["failed"] and "set train_accel=auto" in items["device.check"]["detail"]
        assert "train.start" not in items and "smoke.steps" not in items, "nothing trained"
    finally:
        stop(worker)
        stop_server(server)


def test_a_dataset_that_cannot_be_read_fails_its_checklist_item_saying_what_to_do(tmp_path: Path) -> None:
    """The data stage's failure is a ✗ on its item with the next step for a dashboard user, not a ☐
    and a traceback."""
    cache = tmp_path / "datasets"
    cache.mkdir()
    (cache / "halfcheetah_medium_expert-v2.hdf5").write_bytes(b"not an HDF5 file")
    server = start_server(tmp_path / "server")
    worker = start_worker(server, tmp_path / "w", cache)
    try:
        api = server.client()
        run_id = create(api, 100)
        wait_for(lambda: api.get(f"/api/runs/{run_id}").json()["status"] in ("succeeded", "failed"), 120, "the run")
        run = api.get(f"/api/runs/{run_id}").json()
        assert run["status"] == "failed" and "cannot be read as HDF5" in run["error"]
        item = next(i for i in run["checklist"] if i["key"] == "data.ready")
        assert item["failed"] and "Clone and edit" in item["detail"] and str(cache) in item["detail"]
        assert not any("Traceback" in e["message"] for e in api.get(f"/api/runs/{run_id}/events").json())
    finally:
        stop(worker)
        stop_server(server)
