"""A run whose Hub cannot be reached: the smoke test says what failed and what to do,
ticks its backup item ✗, and the run's `on_backup_failure` decides whether it stops."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.app_helpers import start_server, stop_server
from tests.fake_hub import FakeHubApi
from tests.test_worker_e2e import TASK, tiny_run_config
from tests.test_worker_hub_resume import execute

REPO = "someone/unreachable"


class OfflineHub(FakeHubApi):
    """Fails as huggingface_hub does when DNS cannot resolve the Hub, whatever is asked."""

    def __getattribute__(self, name: str) -> object:
        if name in ("create_repo", "list_repo_files", "create_commit", "hf_hub_download"):
            raise httpx.ConnectError("[Errno -2] Name or service not known")
        return super().__getattribute__(name)


@pytest.mark.parametrize("policy", ["fail", "warn"])
def test_unreachable_hub_fails_the_smoke_test_with_the_next_step(
    tmp_path: Path, dataset_cache: Path, monkeypatch: pytest.MonkeyPatch, policy
) -> None:
    monkeypatch.setenv("DLITE_DATASETS", str(dataset_cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("worker.hub.get_token", lambda: None)  # no saved login on this machine either
    server = start_server(tmp_path / "server")
    try:
        api = server.client()
        config = {**tiny_run_config(40), "hub_repo": REPO, "on_backup_failure": policy}
        run_id = api.post("/api/runs", json={"task": TASK, "config": config}).json()["id"]
        status, _ = execute(server, tmp_path / "machine", OfflineHub(), stop_at=None if policy == "fail" else 20)
        run = api.get(f"/api/runs/{run_id}").json()
        item = next(i for i in run["checklist"] if i["key"] == "smoke.backup")
        assert item["failed"] is True
        detail = item["detail"]
        for fact in (
            "Hugging Face Hub at https://huggingface.co",
            f"repo {REPO}",
            "HF_TOKEN is not set",
            "ConnectError: [Errno -2] Name or service not known",
            "Next: ",
        ):
            assert fact in detail, fact
        if policy == "fail":
            assert status == "failed" and run["status"] == "failed"
            assert detail in run["error"] and "on_backup_failure=warn" in run["error"]
            assert not next(i for i in run["checklist"] if i["key"] == "train.start")["verified_at"]
        else:
            assert status == "stopped"  # it went on into training, where the test stopped it
            assert next(i for i in run["checklist"] if i["key"] == "train.start")["verified_at"]
            events = api.get(f"/api/runs/{run_id}/events").json()
            assert any(
                e["level"] == "warning" and "training goes on without working backups" in e["message"] for e in events
            )
        page = api.get(f"/runs/{run_id}/panels").text
        assert 'class="failed" data-key="smoke.backup"' in page
    finally:
        stop_server(server)
