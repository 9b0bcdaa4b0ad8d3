"""worker.hub against an in-memory fake of HfApi (tests/fake_hub.py): no network,
no real sleeping."""

from __future__ import annotations

import inspect
import logging
import os
import threading
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi

from tests.fake_hub import FakeHubApi, FakeTime
from worker.backup import BackupError, BackupQueue, Extras, RemoteCheckpoint
from worker.hub import HubBackup

SECRET = "hf_LeakCanary0123456789abcdefXYZ"
REPO = "someone/dlite-backups"
PREFIX = "runs/run-7"


@pytest.fixture(autouse=True)
def hf_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return SECRET


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def api(fake_time: FakeTime) -> FakeHubApi:
    return FakeHubApi(fake_time)


def make_hub(api: FakeHubApi, fake_time: FakeTime, **kw) -> HubBackup:
    return HubBackup(REPO, "run-7", api=api.as_hf_api(), sleep=fake_time.sleep, clock=fake_time.clock, **kw)


def make_ckpt(folder: Path, step: int) -> Path:
    """A tiny real torch checkpoint whose bytes differ per step."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt_{step:08d}.pt"
    torch.save({"step": step, "w": torch.arange(4.0) * step}, path)
    return path


def test_fake_matches_real_hfapi_signatures() -> None:
    """Every parameter the fake accepts exists on the real HfApi method, with the same kind."""
    for name in ("create_repo", "create_commit", "list_repo_files", "hf_hub_download", "repo_info"):
        real = inspect.signature(getattr(HfApi, name)).parameters
        for pname, p in inspect.signature(getattr(FakeHubApi, name)).parameters.items():
            assert pname in real, f"{name}({pname}) is not a real HfApi parameter"
            assert p.kind == real[pname].kind, f"{name}({pname}) has the wrong kind"


def test_backup_is_one_commit_with_checkpoint_manifest_and_extras(api, fake_time, tmp_path) -> None:
    hub = make_hub(api, fake_time)
    ckpt = make_ckpt(tmp_path, 1000)
    figure = tmp_path / "loss.png"
    figure.write_bytes(b"\x89PNG fake")
    result = hub.backup(ckpt, 1000, {"metrics.json": b'{"loss": [1.0]}', "figures/loss_curve.png": figure})

    assert api.private[REPO] is True
    assert len(api.commits) == 1
    assert sorted(api.commits[0]["added"]) == sorted(
        [
            f"{PREFIX}/checkpoints/ckpt_00001000.pt",
            f"{PREFIX}/manifest.json",
            f"{PREFIX}/metrics.json",
            f"{PREFIX}/figures/loss_curve.png",
        ]
    )
    files = api.repos[REPO]
    assert files[f"{PREFIX}/checkpoints/ckpt_00001000.pt"] == ckpt.read_bytes()
    assert files[f"{PREFIX}/figures/loss_curve.png"] == b"\x89PNG fake"
    assert result.url == f"https://huggingface.co/{REPO}/blob/main/{PREFIX}/checkpoints/ckpt_00001000.pt"
    assert (result.step, result.size, result.deleted) == (1000, ckpt.stat().st_size, [])
    assert hub.remote_checkpoints() == [
        RemoteCheckpoint(1000, f"{PREFIX}/checkpoints/ckpt_00001000.pt", result.sha256, result.size)
    ]


def test_ensure_repo_creates_private_repo_once(api, fake_time) -> None:
    hub = make_hub(api, fake_time)
    hub.prepare()
    hub.prepare()
    assert api.private == {REPO: True}
    assert api.calls == ["create_repo", "create_repo"]


def test_retention_deletes_in_the_same_commit_and_spaces_commits(api, fake_time, tmp_path) -> None:
    hub = make_hub(api, fake_time, keep_every=5000)
    results = {s: hub.backup(make_ckpt(tmp_path, s), s, {}) for s in (1000, 2000, 5000, 6000, 7000)}

    ckpts = sorted(p for p in api.repos[REPO] if p.startswith(f"{PREFIX}/checkpoints/"))
    assert ckpts == [f"{PREFIX}/checkpoints/ckpt_00005000.pt", f"{PREFIX}/checkpoints/ckpt_00007000.pt"]
    assert [c.step for c in hub.remote_checkpoints()] == [5000, 7000]
    assert results[2000].deleted == [f"{PREFIX}/checkpoints/ckpt_00001000.pt"]
    assert results[7000].deleted == [f"{PREFIX}/checkpoints/ckpt_00006000.pt"]
    assert api.commits[-1]["deleted"] == [f"{PREFIX}/checkpoints/ckpt_00006000.pt"]
    times = [c["time"] for c in api.commits]
    assert len(times) == 5
    assert all(b - a >= 60 for a, b in zip(times, times[1:]))


def test_429_honours_retry_after(api, fake_time, tmp_path) -> None:
    api.fail["create_commit"] = [(429, {"Retry-After": "7"})]
    hub = make_hub(api, fake_time)
    hub.backup(make_ckpt(tmp_path, 1000), 1000, {})
    assert fake_time.sleeps == [7.0]
    assert len(api.commits) == 1
    assert api.calls.count("create_commit") == 2


def test_503_twice_backs_off_exponentially(api, fake_time, tmp_path) -> None:
    api.fail["create_commit"] = [(503, {}), (503, {})]
    make_hub(api, fake_time).backup(make_ckpt(tmp_path, 1000), 1000, {})
    assert fake_time.sleeps == [2.0, 4.0]
    assert len(api.commits) == 1


def test_backoff_is_capped(api, fake_time, tmp_path) -> None:
    api.fail["create_commit"] = [(502, {})] * 11
    with pytest.raises(BackupError):
        make_hub(api, fake_time, max_retries=10).backup(make_ckpt(tmp_path, 1000), 1000, {})
    assert fake_time.sleeps == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]


def test_permanent_500_raises_after_max_retries(api, fake_time, tmp_path) -> None:
    api.fail["create_commit"] = [(500, {})] * 100
    with pytest.raises(BackupError) as info:
        make_hub(api, fake_time, max_retries=3).backup(make_ckpt(tmp_path, 1000), 1000, {})
    assert info.value.status == 500
    assert "500" in str(info.value) and "checkpoint step 1000" in str(info.value)
    assert fake_time.sleeps == [2.0, 4.0, 8.0]
    assert api.calls.count("create_commit") == 4
    assert api.commits == []


def test_403_fails_without_retry(api, fake_time, tmp_path) -> None:
    api.fail["create_commit"] = [(403, {"X-Error-Message": f"token {SECRET} has no write access"})]
    with pytest.raises(BackupError) as info:
        make_hub(api, fake_time).backup(make_ckpt(tmp_path, 1000), 1000, {})
    assert info.value.status == 403
    assert fake_time.sleeps == []
    assert api.calls.count("create_commit") == 1
    assert SECRET not in str(info.value) and "no write access" in str(info.value)


def test_download_retries_5xx_wrapped_by_hf_hub_download(api, fake_time, tmp_path) -> None:
    hub = make_hub(api, fake_time)
    hub.backup(make_ckpt(tmp_path / "train", 1000), 1000, {})
    api.fail["hf_hub_download"] = [(503, {"Retry-After": "3"})]
    assert [c.step for c in hub.remote_checkpoints()] == [1000]
    assert fake_time.sleeps[-1] == 3.0


def test_remote_checkpoints_empty_without_repo_or_manifest(api, fake_time) -> None:
    hub = make_hub(api, fake_time)
    assert hub.remote_checkpoints() == []
    hub.prepare()
    assert hub.remote_checkpoints() == []


def test_restore_latest_after_local_wipe(api, fake_time, tmp_path) -> None:
    hub = make_hub(api, fake_time)
    train = tmp_path / "train"
    for step in (1000, 2000):
        hub.backup(make_ckpt(train, step), step, {"metrics.json": b'{"step": %d}' % step})
    uploaded = (train / "ckpt_00002000.pt").read_bytes()
    for p in train.iterdir():
        p.unlink()

    restored = make_hub(api, fake_time).restore_latest(train)
    assert restored is not None and restored == train / "ckpt_00002000.pt"
    assert restored.read_bytes() == uploaded
    assert torch.load(restored)["step"] == 2000
    assert (train / "metrics.json").read_bytes() == b'{"step": 2000}'
    assert sorted(p.name for p in train.iterdir()) == ["ckpt_00002000.pt", "metrics.json"]


def test_restore_brings_back_the_recorded_videos_and_plans(api, fake_time, tmp_path) -> None:
    """A fresh machine gets the run's artifacts/ next to its checkpoint, where the worker keeps
    them (a stale local copy is replaced); the figures, which the server draws, stay behind."""
    hub = make_hub(api, fake_time)
    videos = {"R1-quick-1000.webm": b"\x1a\x45\xdf\xa3 step 1000", "R1-quick-1000.plans.json": b'{"step": 1000}'}
    hub.backup(make_ckpt(tmp_path / "train", 1000), 1000, {f"artifacts/{n}": c for n, c in videos.items()})
    videos["R1-final-2000.webm"] = b"\x1a\x45\xdf\xa3 step 2000"
    extras: Extras = {**{f"artifacts/{n}": c for n, c in videos.items()}, "figures/loss_curve.png": b"png"}
    hub.backup(make_ckpt(tmp_path / "train", 2000), 2000, extras)

    run_dir = tmp_path / "fresh-vm" / "run"
    (run_dir / "artifacts").mkdir(parents=True)
    (run_dir / "artifacts" / "R1-quick-1000.webm").write_bytes(b"half a file")
    restored = make_hub(api, fake_time).restore_latest(run_dir / "checkpoints", {"artifacts": run_dir / "artifacts"})
    assert restored == run_dir / "checkpoints" / "ckpt_00002000.pt"
    assert {p.name: p.read_bytes() for p in (run_dir / "artifacts").iterdir()} == videos
    assert sorted(p.name for p in run_dir.iterdir()) == ["artifacts", "checkpoints"]


def test_a_restore_that_cannot_bring_the_videos_back_leaves_no_checkpoint(api, fake_time, tmp_path) -> None:
    """Otherwise the next attempt would resume from the local checkpoint, and the videos would
    never come back; this way it restores again."""
    hub = make_hub(api, fake_time)
    hub.backup(make_ckpt(tmp_path / "train", 1000), 1000, {"artifacts/R1-quick-1000.webm": b"\x1a\x45\xdf\xa3"})
    api.fail["list_repo_files"] = [(403, {})]
    run_dir = tmp_path / "fresh-vm"
    with pytest.raises(BackupError):
        hub.restore_latest(run_dir / "checkpoints", {"artifacts": run_dir / "artifacts"})
    assert list((run_dir / "checkpoints").iterdir()) == [] and list((run_dir / "artifacts").iterdir()) == []
    restored = hub.restore_latest(run_dir / "checkpoints", {"artifacts": run_dir / "artifacts"})
    assert restored == run_dir / "checkpoints" / "ckpt_00001000.pt"
    assert [p.name for p in (run_dir / "artifacts").iterdir()] == ["R1-quick-1000.webm"]


def test_restore_falls_back_when_newest_is_corrupt(api, fake_time, tmp_path) -> None:
    hub = make_hub(api, fake_time, keep_every=1000)
    train = tmp_path / "train"
    for step in (1000, 2000):
        hub.backup(make_ckpt(train, step), step, {})
    good = (train / "ckpt_00001000.pt").read_bytes()
    api.corrupt.add(f"{PREFIX}/checkpoints/ckpt_00002000.pt")

    target = tmp_path / "restore"
    restored = hub.restore_latest(target)
    assert restored is not None and restored == target / "ckpt_00001000.pt"
    assert restored.read_bytes() == good
    assert [p.name for p in target.iterdir()] == ["ckpt_00001000.pt"]


def test_restore_returns_none_when_nothing_valid(api, fake_time, tmp_path) -> None:
    hub = make_hub(api, fake_time)
    assert hub.restore_latest(tmp_path / "empty") is None
    hub.backup(make_ckpt(tmp_path / "train", 1000), 1000, {})
    api.corrupt.add(f"{PREFIX}/checkpoints/ckpt_00001000.pt")
    assert hub.restore_latest(tmp_path / "restore") is None
    assert list((tmp_path / "restore").iterdir()) == []


def test_extras_cannot_escape_the_run_folder(api, fake_time, tmp_path) -> None:
    hub = make_hub(api, fake_time)
    ckpt = make_ckpt(tmp_path, 1000)
    for name in ("../other/metrics.json", "/etc/passwd", "manifest.json", "checkpoints/ckpt_00000001.pt"):
        with pytest.raises(ValueError):
            hub.backup(ckpt, 1000, {name: b"x"})
    assert api.commits == []


class Recorder:
    """Collects on_state calls; `done` is set on each terminal state."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, str | None, list[int]]] = []
        self.done = threading.Event()

    def __call__(self, step: int, state: str, detail: str | None, command_ids: list[int]) -> None:
        self.calls.append((step, state, detail, command_ids))
        if state in ("hub", "error"):
            self.done.set()

    def last_detail(self) -> str:
        detail = self.calls[-1][2]
        assert detail is not None, f"no detail in {self.calls[-1]}"
        return detail


def test_queue_coalesces_requests_arriving_during_an_upload(api, fake_time, tmp_path) -> None:
    hub = make_hub(api, fake_time)
    api.commit_gate = threading.Event()
    rec = Recorder()
    queue = BackupQueue(hub)
    queue.request(make_ckpt(tmp_path, 1000), 1000, dict, rec, command_id=None)
    assert api.commit_entered.wait(5)
    for step, cmd in ((2000, 2), (3000, 3), (4000, 4)):
        queue.request(make_ckpt(tmp_path, step), step, lambda: {"metrics.json": b"{}"}, rec, command_id=cmd)
    api.commit_gate.set()
    assert queue.close(timeout=10)

    assert [c["added"][0] for c in api.commits] == [
        f"{PREFIX}/checkpoints/ckpt_00001000.pt",
        f"{PREFIX}/checkpoints/ckpt_00004000.pt",
    ]
    url = f"https://huggingface.co/{REPO}/blob/main/{PREFIX}/checkpoints/ckpt_0000%d.pt"
    assert rec.calls == [
        (1000, "uploading", None, []),
        (1000, "hub", url % 1000, []),
        (4000, "uploading", None, [2, 3, 4]),
        (4000, "hub", url % 4000, [2, 3, 4]),
    ]
    assert api.commits[1]["time"] - api.commits[0]["time"] >= 60


def test_queue_reports_each_distinct_callback(api, fake_time, tmp_path) -> None:
    hub = make_hub(api, fake_time)
    api.commit_gate = threading.Event()
    first, second, third = Recorder(), Recorder(), Recorder()
    queue = BackupQueue(hub)
    queue.request(make_ckpt(tmp_path, 1000), 1000, dict, first)
    assert api.commit_entered.wait(5)
    queue.request(make_ckpt(tmp_path, 2000), 2000, dict, second, command_id=8)
    queue.request(make_ckpt(tmp_path, 3000), 3000, dict, third)
    api.commit_gate.set()
    assert queue.close(timeout=10)
    assert [c[:2] for c in second.calls] == [(3000, "uploading"), (3000, "hub")]
    assert second.calls[-1][3] == [8]
    assert third.calls[-1][3] == []


def test_queue_reports_error_and_goes_on(api, fake_time, tmp_path) -> None:
    hub = make_hub(api, fake_time, max_retries=2)
    api.fail["create_commit"] = [(500, {})] * 3
    failed, ok = Recorder(), Recorder()
    queue = BackupQueue(hub)
    queue.request(make_ckpt(tmp_path, 1000), 1000, dict, failed, command_id=1)
    assert failed.done.wait(5)
    queue.request(make_ckpt(tmp_path, 2000), 2000, dict, ok, command_id=2)
    assert queue.close(timeout=10)

    assert failed.calls[-1][:2] == (1000, "error") and "HTTP 500" in failed.last_detail()
    assert failed.calls[-1][3] == [1]
    assert ok.calls[-1][:2] == (2000, "hub") and ok.calls[-1][3] == [2]
    assert len(api.commits) == 1


def test_queue_reports_local_failures_too(api, fake_time, tmp_path) -> None:
    rec = Recorder()
    queue = BackupQueue(make_hub(api, fake_time))
    queue.request(tmp_path / "missing.pt", 1000, dict, rec)
    assert queue.close(timeout=10)
    assert rec.calls[-1][1] == "error" and "missing.pt" in rec.last_detail()
    with pytest.raises(RuntimeError):
        queue.request(tmp_path / "missing.pt", 2000, dict, rec)


def test_token_never_leaks(api, fake_time, tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert os.environ["HF_TOKEN"] == SECRET
    hub = make_hub(api, fake_time, max_retries=1)
    texts: list[str] = []

    api.fail["create_commit"] = [(429, {"Retry-After": "1"}), (403, {"X-Error-Message": f"bad token {SECRET}"})]
    with pytest.raises(BackupError) as info:
        hub.backup(make_ckpt(tmp_path, 1000), 1000, {})
    texts += [str(info.value), repr(info.value)]

    api.fail["create_commit"] = [(500, {"X-Error-Message": f"oops {SECRET}"})] * 2
    rec = Recorder()
    queue = BackupQueue(hub)
    queue.request(make_ckpt(tmp_path, 2000), 2000, dict, rec, command_id=5)
    assert queue.close(timeout=10)
    assert rec.calls[-1][1] == "error"
    texts += [str(c) for c in rec.calls]
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    texts += [repr(hub.__dict__)]
    assert texts and not [t for t in texts if SECRET in t]
