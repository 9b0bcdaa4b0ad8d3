"""The worker's Hub path end to end, in-process, with a fake Hub client: backups during
training, then a new attempt on a wiped machine resumes from the Hub."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from tests.app_helpers import start_server, stop_server, wait_for, wait_for_claim
from tests.fake_hub import FakeHubApi
from tests.test_worker_e2e import TASK, loss_steps, tiny_run_config
from worker.client import ServerClient
from worker.executor import RunExecutor
from worker.hub import HubBackup

REPO = "someone/dlite-backups"


def execute(server, work_dir: Path, api: FakeHubApi, stop_at: int | None) -> tuple[str, RunExecutor]:
    client = ServerClient(server.url, server.token)
    worker_id = client.register("w", "h", "cpu", None)
    claimed = wait_for_claim(client, worker_id)
    terminate = threading.Event()
    hub = partial(HubBackup, api=api.as_hf_api(), min_interval_s=0.0)
    executor = RunExecutor(client, claimed, work_dir, "cpu", hub, terminate)
    if stop_at is not None:

        def watch() -> None:
            while not (executor.trainer and executor.trainer.step >= stop_at):
                time.sleep(0.01)
            terminate.set()

        threading.Thread(target=watch, daemon=True).start()
    return executor.run(), executor


def test_new_attempt_on_a_wiped_machine_resumes_from_the_hub(
    tmp_path: Path, dataset_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DLITE_DATASETS", str(dataset_cache))
    monkeypatch.setenv("HF_TOKEN", "hf_CanaryToken0123456789")
    server = start_server(tmp_path / "server", lease_seconds=2)
    api_hub = FakeHubApi()
    try:
        api = server.client()
        config = {**tiny_run_config(300), "hub_repo": REPO, "backup_every": 100, "keep_every": 100, "save_interval": 50}
        run_id = api.post("/api/runs", json={"task": TASK, "name": "hc seed0", "config": config}).json()["id"]

        status, first = execute(server, tmp_path / "machine1", api_hub, stop_at=160)
        assert status == "stopped"
        files = api_hub.repos[REPO]
        assert "runs/hc-seed0/checkpoints/ckpt_00000100.pt" in files and "runs/hc-seed0/metrics.json" in files
        assert {
            "runs/hc-seed0/figures/loss_curve.png",
            "runs/hc-seed0/figures/invdyn_loss_curve.png",
            "runs/hc-seed0/figures/normalized_score.png",
        } <= set(files)
        assert files["runs/hc-seed0/figures/loss_curve.png"].startswith(b"\x89PNG")
        assert api_hub.private[REPO] is True
        shutil.rmtree(tmp_path / "machine1")
        with sqlite3.connect(tmp_path / "server" / "dlite.db") as db:  # as if restored from an older snapshot
            assert db.execute("DELETE FROM evaluations WHERE run_id = ?", (run_id,)).rowcount == 1

        wait_for(lambda: api.get(f"/api/runs/{run_id}").json()["status"] == "queued", 30, "the lease to expire")
        status, second = execute(server, tmp_path / "machine2", api_hub, stop_at=None)
        assert status == "succeeded"
        run = api.get(f"/api/runs/{run_id}").json()
        start = next(i for i in run["checklist"] if i["key"] == "train.start")
        assert start["detail"] == "resumed from step 100 (Hugging Face Hub)"
        assert next(i for i in run["checklist"] if i["key"] == "smoke.backup")["verified_at"]
        assert loss_steps(api, run_id) == list(range(10, 301, 10))
        quick = [(e["step"], e["kind"]) for e in run["evaluations"] if e["kind"] == "quick"]
        assert quick == [(100, "quick"), (200, "quick")], "the backup's evaluation replayed once, then training's"
        hub_states = {c["step"]: c["backup_state"] for c in run["checkpoints"]}
        assert hub_states[300] == "hub" and hub_states[100] == "hub"
        kept = sorted(f for f in api_hub.repos[REPO] if f.startswith("runs/hc-seed0/checkpoints/"))
        assert kept == [f"runs/hc-seed0/checkpoints/ckpt_{s:08d}.pt" for s in (100, 200, 300)]
        assert [f for f in api_hub.repos[REPO] if "smoke-test" in f] == [
            "runs/hc-seed0-smoke-test/checkpoints/ckpt_00000010.pt",
            "runs/hc-seed0-smoke-test/manifest.json",
        ]
    finally:
        stop_server(server)
