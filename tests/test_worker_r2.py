"""R2 in the worker, end to end on CPU: R1 training, reflow pairs, reflow training and the
final evaluation of both variants, then a fresh machine resuming reflow from its backup."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.app_helpers import start_server, stop_server, wait_for
from tests.test_worker_e2e import TASK, loss_steps, start_worker, stop, tiny_run_config

R2 = {
    "variant": "R2",
    "reflow_pairs_cond": 64,
    "reflow_pairs_uncond": 16,
    "reflow_pair_batch": 32,
    "reflow_pair_steps": 4,
    "reflow_gradient_steps": 200,
}


def test_r2_run_trains_reflows_and_scores_both_variants(tmp_path: Path, dataset_cache: Path) -> None:
    server = start_server(tmp_path / "server", lease_seconds=3)
    api = server.client()
    # R1 ends at 120, not a multiple of backup_every: its final checkpoint must still be backed up
    config = {**tiny_run_config(120), **R2, "backup_dir": str(tmp_path / "drive"), "backup_every": 50, "eval_every": 0}
    r = api.post("/api/runs", json={"task": TASK, "name": "r2-e2e", "config": config})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    assert r.json()["total_steps"] == 320, "R1's 120 steps, then 200 reflow steps"
    first = start_worker(server, tmp_path / "vm1", dataset_cache)
    try:
        wait_for(
            lambda: any(c["step"] >= 200 for c in api.get(f"/api/runs/{run_id}").json()["checkpoints"]),
            180,
            "a reflow checkpoint past step 200",
        )
        run = api.get(f"/api/runs/{run_id}").json()
        assert run["stage"] == "reflow_train"
        pairs = next(i for i in run["checklist"] if i["key"] == "reflow.pairs")
        assert pairs["verified_at"] and pairs["detail"] == "generated"
        first.send_signal(signal.SIGKILL)
        first.wait()
        # a fresh VM: no work dir, the backup folder is all that is left
        second = start_worker(server, tmp_path / "vm2", dataset_cache)
        try:
            wait_for(
                lambda: api.get(f"/api/runs/{run_id}").json()["status"] in ("succeeded", "failed"),
                240,
                "the resumed R2 run",
            )
            run = api.get(f"/api/runs/{run_id}").json()
            assert run["status"] == "succeeded", run.get("error")
            assert run["attempt"] == 2
            done = {i["key"] for i in run["checklist"] if i["verified_at"]}
            assert {"train.done", "reflow.pairs", "reflow.done", "eval.done", "eval.score"} <= done
            messages = [e["message"] for e in api.get(f"/api/runs/{run_id}/events").json()]
            generated = [
                m
                for m in messages
                if m.startswith("generating 80 pairs per level from the R1 model at step 120 (none on disk yet)")
            ]
            assert len(generated) == 2, "the new VM regenerated the pairs from the same R1 step"
            assert "training resumed from step 120" in "\n".join(messages), "R1's final checkpoint was backed up"
            resumed = [m for m in messages if m.startswith("reflow resumed from step ")]
            assert resumed and int(resumed[0].split()[4]) > 120, "reflow resumed from its backup, not from R1"
            final = {e["variant"]: e for e in run["evaluations"] if e["kind"] == "final"}
            assert set(final) == {"R1", "R2"} and final["R1"]["step"] == 120 and final["R2"]["step"] == 320
            assert final["R2"]["latency_ms_1env"] > 0 and final["R2"]["device"]
            assert loss_steps(api, run_id) == list(range(10, 321, 10)), "reflow's curve continues R1's, no gaps"
        finally:
            stop(second)
    finally:
        stop(first)
        stop_server(server)
