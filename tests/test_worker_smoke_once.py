"""A run's smoke test runs once: a new attempt skips one an earlier attempt passed (the claim
answer lists the checklist items earlier attempts verified), runs again one that was cut
short, and keeps the state a failed-but-tolerated backup left."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.protocol import ChecklistRecord
from tests.app_helpers import LiveServer, claim, claim_run, create_run, register, start_server, stop_server, wait_for
from tests.fake_hub import FakeHubApi
from tests.test_app_worker import short_lease  # noqa: F401  (a TestClient whose leases run out in 0.3 s)
from tests.test_worker_e2e import TASK, tiny_run_config
from tests.test_worker_hub_resume import execute
from worker.executor import SMOKE_KEYS, earlier_smoke_test

SMOKE = SMOKE_KEYS


def _record(key: str, failed: bool = False, attempt: int | None = 1) -> ChecklistRecord:
    return ChecklistRecord(key=key, failed=failed, attempt=attempt)


@pytest.mark.parametrize(
    "keys, backup_failed, backs_up, policy, skipped",
    [
        (SMOKE, False, True, "fail", True),
        (SMOKE[:3], False, False, "fail", True),  # no backup target: the backup item is not part of it
        (SMOKE[:3], False, True, "fail", False),  # this attempt can back up, the earlier one did not check
        (SMOKE, True, True, "warn", True),  # tolerated: skipped, with the unreachable state
        (SMOKE, True, True, "fail", False),  # a retry of a run that stopped there checks again
        (SMOKE[:2], False, False, "fail", False),  # cut short before the reload
        ((), False, False, "fail", False),  # the first attempt
    ],
)
def test_which_earlier_smoke_tests_count(keys, backup_failed, backs_up, policy, skipped) -> None:
    checklist = [_record("data.ready")] + [_record(k, failed=backup_failed and k == "smoke.backup") for k in keys]
    passed = earlier_smoke_test(checklist, backs_up, policy)
    assert (passed is not None) == skipped
    if passed:
        assert passed.key == ("smoke.backup" if backs_up else "smoke.reload")


def test_the_claim_lists_what_earlier_attempts_verified(short_lease: TestClient) -> None:  # noqa: F811
    c = short_lease
    rid = create_run(c)["id"]
    first = claim_run(c, register(c))
    assert first["attempt"] == 1 and first["checklist"] == []
    for key, failed in (("data.ready", False), ("smoke.steps", False), ("smoke.backup", True)):
        assert (
            c.post(f"/api/runs/{rid}/checklist", json={"attempt": 1, "key": key, "failed": failed}).status_code == 200
        )
    time.sleep(0.4)  # the lease runs out; the next claim queues the run again and takes it
    second = claim_run(c, register(c))
    assert second["attempt"] == 2
    assert sorted(second["checklist"], key=lambda i: i["key"]) == [
        {"key": "data.ready", "failed": False, "attempt": 1},
        {"key": "smoke.backup", "failed": True, "attempt": 1},
        {"key": "smoke.steps", "failed": False, "attempt": 1},
    ]
    schema = c.get("/api/openapi.json").json()["components"]["schemas"]
    assert "checklist" in schema["ClaimResponse"]["properties"]


def _attempt_messages(api: httpx.Client, run_id: int, attempt: int) -> list[str]:
    """The run's events from the claim of `attempt` on."""
    said = [e["message"] for e in api.get(f"/api/runs/{run_id}/events").json()]
    start = next(i for i, m in enumerate(said) if m.startswith(f"attempt {attempt} claimed"))
    return said[start:]


def _smoke_items(api: httpx.Client, run_id: int) -> dict[str, tuple[float | None, bool]]:
    return {
        i["key"]: (i["verified_at"], i["failed"])
        for i in api.get(f"/api/runs/{run_id}").json()["checklist"]
        if i["key"] in SMOKE
    }


def _requeued(api: httpx.Client, run_id: int) -> None:
    wait_for(lambda: api.get(f"/api/runs/{run_id}").json()["status"] == "queued", 30, "the lease to run out")


@pytest.fixture
def server(tmp_path: Path, dataset_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    monkeypatch.setenv("DLITE_DATASETS", str(dataset_cache))
    live = start_server(tmp_path / "server", lease_seconds=2)
    yield live
    stop_server(live)


def test_a_cut_short_smoke_test_runs_again_and_a_passed_one_is_skipped(server: LiveServer, tmp_path: Path) -> None:
    """Attempt 1 dies during the smoke test, attempt 2 runs it (and is stopped in training),
    attempt 3 skips it, keeps its items and resumes training from attempt 2's checkpoint."""
    api = server.client()
    drive = tmp_path / "drive"
    drive.mkdir()
    config = {**tiny_run_config(60), "backup_dir": str(drive / "dl")}
    run_id = api.post("/api/runs", json={"task": TASK, "name": "once", "config": config}).json()["id"]
    claim(api, register(api, "doomed"))
    for key in ("data.ready", "smoke.steps", "smoke.checkpoint"):  # then the worker died
        api.post(f"/api/runs/{run_id}/checklist", json={"attempt": 1, "key": key})
    _requeued(api, run_id)

    status, _ = execute(server, tmp_path / "machine", FakeHubApi(), stop_at=20)
    assert status == "stopped"
    said = _attempt_messages(api, run_id, 2)
    assert "stage smoke started" in said and not any("smoke test passed in" in m for m in said)
    smoke = _smoke_items(api, run_id)
    assert all(verified and not failed for verified, failed in smoke.values()), smoke
    smoke_backup = drive / "dl" / "runs" / "once-smoke-test" / "manifest.json"
    written = smoke_backup.stat().st_mtime_ns
    _requeued(api, run_id)

    status, _ = execute(server, tmp_path / "machine", FakeHubApi(), stop_at=None)
    run = api.get(f"/api/runs/{run_id}").json()
    assert status == "succeeded" and run["attempt"] == 3, run["error"]
    said = _attempt_messages(api, run_id, 3)
    assert "smoke test passed in attempt 2: skipped" in said
    assert "stage smoke started" not in said and said.index("stage data started") < said.index("stage train started")
    assert _smoke_items(api, run_id) == smoke, "the smoke items stay as attempt 2 left them"
    assert smoke_backup.stat().st_mtime_ns == written, "no second smoke-test backup"
    start = next(i for i in run["checklist"] if i["key"] == "train.start")["detail"]
    resumed = re.fullmatch(r"resumed from step (\d+) \(local checkpoint\)", start)
    assert resumed and int(resumed[1]) >= 20, start


def test_a_skipped_smoke_test_keeps_the_unreachable_backup_state(server: LiveServer, tmp_path: Path) -> None:
    """on_backup_failure=warn, backup folder missing (Drive not mounted): the first attempt runs
    the smoke test, which ticks the backup ✗. The next, on a wiped machine, skips it and, as
    that smoke test said, trains on when the backup cannot be read (not: fails the run)."""
    api = server.client()
    config = {
        **tiny_run_config(40),
        "backup_dir": str(tmp_path / "unmounted" / "drive" / "dl"),
        "on_backup_failure": "warn",
    }
    run_id = api.post("/api/runs", json={"task": TASK, "name": "warned", "config": config}).json()["id"]

    status, first = execute(server, tmp_path / "machine1", FakeHubApi(), stop_at=20)
    assert status == "stopped" and first.backup_unreachable
    said = _attempt_messages(api, run_id, 1)
    assert "stage smoke started" in said
    assert _smoke_items(api, run_id)["smoke.backup"][1] is True, "the first attempt ran the smoke test"
    shutil.rmtree(tmp_path / "machine1")
    _requeued(api, run_id)

    status, second = execute(server, tmp_path / "machine2", FakeHubApi(), stop_at=None)
    run = api.get(f"/api/runs/{run_id}").json()
    assert status == "succeeded", run["error"]
    assert second.backup_unreachable
    said = _attempt_messages(api, run_id, 2)
    assert "stage smoke started" not in said
    assert (
        "smoke test passed in attempt 1: skipped; its backup failed, so training goes on without working "
        "backups (on_backup_failure=warn)"
    ) in said
    assert any(m.startswith("no resume from the backup folder") for m in said), said
    assert next(i for i in run["checklist"] if i["key"] == "train.start")["detail"] == "started fresh"
