"""The directory backup target (Google Drive mounted in Colab, or any folder) and the
time-based backup schedule: no network, no real sleeping."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from dlite.record import RenderUnavailable
from tests.app_helpers import claim, create_run, register, start_server, stop_server, wait_for, wait_for_claim
from tests.fake_hub import FakeTime
from tests.test_dlite_record import render_unavailable
from tests.test_worker_e2e import TASK, tiny_run_config
from tests.test_worker_hub import make_ckpt
from worker.backup import BackupError, BackupSchedule, Extras, RemoteCheckpoint
from worker.backup_dir import DirectoryBackup
from worker.client import ServerClient
from worker.executor import RunExecutor

RUN = "runs/run-7"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The folder a user names in backup_dir; its parent exists, as MyDrive does once mounted."""
    return tmp_path / "drive" / "diffuserlite"


def make_target(root: Path, **kw) -> DirectoryBackup:
    root.parent.mkdir(parents=True, exist_ok=True)
    return DirectoryBackup(root, "run-7", **kw)


def manifest_steps(root: Path, run: str = RUN) -> list[int]:
    return sorted(int(s) for s in json.loads((root / run / "manifest.json").read_text())["checkpoints"])


def test_backup_writes_checkpoint_extras_and_manifest(root: Path, tmp_path: Path) -> None:
    target = make_target(root)
    ckpt = make_ckpt(tmp_path / "train", 1000)
    figure = tmp_path / "loss.png"
    figure.write_bytes(b"\x89PNG fake")
    result = target.backup(ckpt, 1000, {"metrics.json": b'{"loss": [1.0]}', "figures/loss_curve.png": figure})

    stored = root / RUN / "checkpoints" / "ckpt_00001000.pt"
    assert stored.read_bytes() == ckpt.read_bytes()
    assert (root / RUN / "figures" / "loss_curve.png").read_bytes() == b"\x89PNG fake"
    assert (root / RUN / "metrics.json").read_bytes() == b'{"loss": [1.0]}'
    assert result.url == stored.as_uri() and result.url.startswith("file:///")
    assert target.remote_checkpoints() == [
        RemoteCheckpoint(1000, f"{RUN}/checkpoints/ckpt_00001000.pt", result.sha256, result.size)
    ]
    assert not [p for p in root.rglob("*.tmp")], "no temporary file is left behind"


def test_retention_keeps_newest_and_multiples_of_keep_every(root: Path, tmp_path: Path) -> None:
    target = make_target(root, keep_every=5000)
    results = {s: target.backup(make_ckpt(tmp_path / "train", s), s, {}) for s in (1000, 2000, 5000, 6000, 7000)}
    assert sorted(p.name for p in (root / RUN / "checkpoints").iterdir()) == ["ckpt_00005000.pt", "ckpt_00007000.pt"]
    assert manifest_steps(root) == [5000, 7000]
    assert results[7000].deleted == [f"{RUN}/checkpoints/ckpt_00006000.pt"]


def test_commits_are_spaced_by_min_interval(root: Path, tmp_path: Path) -> None:
    clock = FakeTime()
    target = make_target(root, min_interval_s=30.0, sleep=clock.sleep, clock=clock.clock)
    for step in (1000, 2000, 3000):
        target.backup(make_ckpt(tmp_path / "train", step), step, {})
    assert clock.sleeps == [30.0, 30.0]


def test_restore_after_wipe_and_fallback_when_newest_is_corrupt(root: Path, tmp_path: Path) -> None:
    target = make_target(root, keep_every=1000)
    train = tmp_path / "train"
    for step in (1000, 2000):
        target.backup(make_ckpt(train, step), step, {"metrics.json": b'{"step": %d}' % step})
    good = (train / "ckpt_00001000.pt").read_bytes()

    fresh = tmp_path / "fresh-vm"
    restored = DirectoryBackup(root, "run-7").restore_latest(fresh)
    assert restored == fresh / "ckpt_00002000.pt" and torch.load(restored)["step"] == 2000
    assert (fresh / "metrics.json").read_bytes() == b'{"step": 2000}'

    newest = root / RUN / "checkpoints" / "ckpt_00002000.pt"
    newest.write_bytes(bytes(b ^ 0xFF for b in newest.read_bytes()))  # bit rot on Drive
    again = tmp_path / "another-vm"
    restored = DirectoryBackup(root, "run-7").restore_latest(again)
    assert restored == again / "ckpt_00001000.pt" and restored.read_bytes() == good


def test_restore_brings_back_the_recorded_videos_and_plans(root: Path, tmp_path: Path) -> None:
    """The checkpoint, metrics.json and the run's artifacts/ come back, each where the worker
    keeps it; nothing staged is left behind."""
    target = make_target(root)
    videos = {"R1-quick-1000.webm": b"\x1a\x45\xdf\xa3 step 1000", "R1-quick-1000.plans.json": b'{"step": 1000}'}
    extras: Extras = {
        **{f"artifacts/{n}": c for n, c in videos.items()},
        "metrics.json": b"{}",
        "figures/x.png": b"png",
    }
    target.backup(make_ckpt(tmp_path / "train", 1000), 1000, extras)

    run_dir = tmp_path / "fresh-vm" / "run"
    restored = DirectoryBackup(root, "run-7").restore_latest(
        run_dir / "checkpoints", {"artifacts": run_dir / "artifacts"}
    )
    assert restored == run_dir / "checkpoints" / "ckpt_00001000.pt"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt_00001000.pt", "metrics.json"]
    assert {p.name: p.read_bytes() for p in (run_dir / "artifacts").iterdir()} == videos
    assert sorted(p.name for p in run_dir.iterdir()) == ["artifacts", "checkpoints"]
    again = tmp_path / "another-vm"
    DirectoryBackup(root, "run-7").restore_latest(again)
    assert sorted(p.name for p in again.iterdir()) == ["ckpt_00001000.pt", "metrics.json"], "only when asked"


def test_a_failed_write_leaves_the_previous_backup_whole(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drive unmounting or filling up mid-backup: the old manifest and its checkpoint stay
    valid, the new checkpoint is not listed, no temporary file remains."""
    target = make_target(root, keep_every=1)
    target.backup(make_ckpt(tmp_path / "train", 1000), 1000, {})
    real_replace = os.replace

    def failing_replace(src, dst) -> None:
        if str(dst).endswith("manifest.json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(BackupError) as info:
        target.backup(make_ckpt(tmp_path / "train", 2000), 2000, {})
    monkeypatch.undo()
    assert "No space left" in str(info.value) and "writable" in str(info.value)
    assert manifest_steps(root) == [1000]
    assert not [p for p in root.rglob("*.tmp")]
    restored = DirectoryBackup(root, "run-7").restore_latest(tmp_path / "vm")
    assert restored is not None and torch.load(restored)["step"] == 1000


def test_unmounted_drive_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    """Without Drive mounted, /content/drive/MyDrive is missing: writing there would put the
    'backup' on the VM's own disk, and reading it as empty would restart the run."""
    target = DirectoryBackup(tmp_path / "drive" / "MyDrive" / "diffuserlite", "run-7")
    with pytest.raises(BackupError, match="drive.mount"):
        target.prepare()
    assert not (tmp_path / "drive").exists()
    with pytest.raises(BackupError, match="does not exist"):
        target.restore_latest(tmp_path / "vm")
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)
    target.prepare()
    assert target.restore_latest(tmp_path / "vm") is None


def test_server_records_a_backup_folder_location_without_linking_it(client) -> None:
    """The checkpoint protocol takes a file:// URL for a folder backup; the page shows it as
    text (a browser cannot open the worker's files), and other schemes stay refused."""
    rid = create_run(client, backup_dir="/content/drive/MyDrive/dl")["id"]
    claim(client, register(client))
    url = "file:///content/drive/MyDrive/dl/runs/x/checkpoints/ckpt_00000500.pt"
    ckpt = {"attempt": 1, "step": 500, "size": 1, "sha256": "0" * 64, "backup_state": "hub"}
    for bad in ("file://evil.example/x.pt", "ftp://host/x.pt", "javascript:alert(1)"):
        assert client.post(f"/api/runs/{rid}/checkpoints", json={**ckpt, "hub_url": bad}).status_code == 422
    assert client.post(f"/api/runs/{rid}/checkpoints", json={**ckpt, "hub_url": url}).status_code == 200
    [stored] = client.get(f"/api/runs/{rid}").json()["checkpoints"]
    assert stored["hub_url"] == url and stored["backed_up_at"] is not None
    page = client.get(f"/runs/{rid}").text
    assert "in the backup folder" in page and f'href="{url}"' not in page


def test_schedule_backs_up_by_steps_or_minutes_whichever_first() -> None:
    clock = FakeTime()
    schedule = BackupSchedule(every_steps=1000, every_minutes=15, clock=clock.clock)
    assert not schedule.due(500)
    assert schedule.due(1000), "the step interval"
    schedule.backed_up()
    clock.sleep(14 * 60)
    assert not schedule.due(1500)
    clock.sleep(60)
    assert schedule.time_due() and schedule.due(1500), "15 minutes passed"
    schedule.backed_up()
    assert not schedule.due(1600), "the interval starts again at the last backup"

    no_time = BackupSchedule(every_steps=1000, every_minutes=0, clock=clock.clock)
    clock.sleep(10**6)
    assert not no_time.time_due() and not no_time.due(1500) and no_time.due(2000)
    no_steps = BackupSchedule(every_steps=0, every_minutes=1, clock=clock.clock)
    assert not no_steps.due(1000)
    clock.sleep(60)
    assert no_steps.due(1001)


def test_time_based_backups_between_save_intervals(
    tmp_path: Path, root: Path, dataset_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose step-based backups never come (backup_every 0, save_interval past the
    end) still backs up every `backup_every_minutes` of training, to the backup folder.
    The clock is fake: each training step takes 2 s, so 1 minute is 30 steps."""
    monkeypatch.setenv("DLITE_DATASETS", str(dataset_cache))
    root.parent.mkdir(parents=True)
    server = start_server(tmp_path / "server")
    try:
        api = server.client()
        config = {
            **tiny_run_config(100),
            "save_interval": 1000,
            "backup_every": 0,
            "backup_every_minutes": 1,
            "keep_every": 30,
            "eval_every": 0,
            "backup_dir": str(root),
        }
        run_id = api.post("/api/runs", json={"task": TASK, "name": "timed", "config": config}).json()["id"]
        client = ServerClient(server.url, server.token)
        worker_id = client.register("w", "h", "cpu", None)
        claimed = wait_for_claim(client, worker_id)
        executor: RunExecutor | None = None

        def clock() -> float:
            return 2.0 * (executor.trainer.step if executor and executor.trainer else 0)

        executor = RunExecutor(client, claimed, tmp_path / "vm", "cpu", None, threading.Event(), clock=clock)
        assert executor.run() == "succeeded"

        run = api.get(f"/api/runs/{run_id}").json()
        assert [c["step"] for c in run["checkpoints"]] == [30, 60, 90, 100]
        backed_up = manifest_steps(root, "runs/timed")
        assert 100 in backed_up and set(backed_up) <= {30, 60, 90, 100}
        assert set(backed_up) & {30, 60, 90}, "at least one backup by time before the end"
        final = next(c for c in run["checkpoints"] if c["step"] == 100)
        assert final["backup_state"] == "hub"
        assert final["hub_url"] == (root / "runs/timed/checkpoints/ckpt_00000100.pt").as_uri()
        assert manifest_steps(root, "runs/timed-smoke-test") == [10]
        smoke = next(i for i in run["checklist"] if i["key"] == "smoke.backup")
        assert smoke["detail"].startswith("file:///")
        page = api.get(f"/runs/{run_id}")
        assert page.status_code == 200 and "in the backup folder" in page.text
    finally:
        stop_server(server)


def test_a_run_resumed_on_a_fresh_machine_and_server_gets_its_videos_back(
    tmp_path: Path, root: Path, dataset_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new Colab VM: a fresh server and work dir, the same run re-created by name. The resume
    from the backup folder brings the recorded quick evaluation's video and plans back to disk
    and uploads them to the new server, byte for byte, as it replays the curves."""
    monkeypatch.setenv("DLITE_DATASETS", str(dataset_cache))
    monkeypatch.setenv("MUJOCO_GL", "egl")
    root.parent.mkdir(parents=True)
    config = {**tiny_run_config(100), "eval_every": 50, "video_every_quick": 1, "backup_dir": str(root)}
    quick = ("R1-quick-50.webm", "R1-quick-50.plans.json")
    held: list[dict[str, str]] = []
    for machine in ("vm-1", "vm-2"):
        server = start_server(tmp_path / f"server-{machine}")
        try:
            api = server.client()
            run_id = api.post("/api/runs", json={"task": TASK, "name": "filmed", "config": config}).json()["id"]
            client = ServerClient(server.url, server.token)
            claimed = wait_for_claim(client, client.register("w", "h", "cpu", None))
            executor = RunExecutor(client, claimed, tmp_path / machine, "cpu", None, threading.Event())
            assert executor.run() == "succeeded"
            run = api.get(f"/api/runs/{run_id}").json()
            video = next(i for i in run["checklist"] if i["key"] == "eval.video")
            if video["failed"]:
                render_unavailable(RenderUnavailable(video["detail"]))
            held.append({a["name"]: a["sha256"] for a in api.get(f"/api/runs/{run_id}/artifacts").json()})
        finally:
            stop_server(server)
    start = next(i for i in run["checklist"] if i["key"] == "train.start")
    assert start["detail"].startswith("resumed from step 100") and "backup folder" in start["detail"], start
    assert any(e["step"] == 50 and e["kind"] == "quick" for e in run["evaluations"]), "replayed from the export"
    first, resumed = held
    assert {name: resumed.get(name) for name in quick} == {name: first[name] for name in quick}
    folder = tmp_path / "vm-2" / "runs" / claimed.run_uuid / "artifacts"
    assert {p.name for p in folder.iterdir()} >= set(quick), "kept on disk: later backups include them"


class _SlowTarget:
    """A backup target whose upload waits until released (a server outage holding the export)."""

    prefix = "slow"

    def __init__(self) -> None:
        self.slot = threading.Event()
        self.release = threading.Event()
        self.read: list[bytes] = []

    def wait_for_commit_slot(self) -> None:
        self.slot.wait(30)

    def backup(self, path: Path, step: int, extras: dict) -> object:
        self.release.wait(30)
        self.read.append(path.read_bytes())  # FileNotFoundError if keep_local deleted it meanwhile
        return type("Result", (), {"step": step, "url": f"file:///{path.name}"})()


def test_keep_local_never_deletes_a_checkpoint_a_backup_still_reads(tiny_hdf5: Path, tmp_path: Path) -> None:
    from dlite import d4rl
    from dlite.config import from_dict
    from dlite.dataset import WindowDataset
    from dlite.train import Trainer
    from tests.conftest import TINY
    from worker.backup import BackupQueue

    cfg = from_dict({**TINY, "keep_local": 1, "save_interval": 10})
    trainer = Trainer(cfg, WindowDataset(d4rl.load(tiny_hdf5), cfg), tmp_path)
    target = _SlowTarget()
    queue = BackupQueue(target)  # type: ignore[arg-type]
    trainer.protected = queue.in_use
    states: list[tuple[int, str]] = []
    trainer.fit(until=10)
    queue.request(tmp_path / "ckpt_00000010.pt", 10, dict, lambda step, state, *_: states.append((step, state)))
    trainer.fit(until=30)  # two more checkpoints while step 10 waits for its commit slot (queued)
    assert [p.name for p in sorted(tmp_path.glob("ckpt_*.pt"))] == ["ckpt_00000010.pt", "ckpt_00000030.pt"]
    target.slot.set()
    wait_for(lambda: states == [(10, "uploading")], 10, "the upload to start")
    trainer.fit(until=40)  # and while it uploads
    assert [p.name for p in sorted(tmp_path.glob("ckpt_*.pt"))] == ["ckpt_00000010.pt", "ckpt_00000040.pt"]
    target.release.set()
    assert queue.close(30)
    assert states == [(10, "uploading"), (10, "hub")] and target.read
    assert queue.in_use() == set()
    trainer.fit(until=50)
    assert [p.name for p in sorted(tmp_path.glob("ckpt_*.pt"))] == ["ckpt_00000050.pt"], "then it goes"


def test_a_backup_folder_checkpoint_on_this_machine_downloads_with_its_sha256(client, tmp_path: Path, settings) -> None:
    """The run page offers what this machine can serve (a verified backup-folder copy), a Hub
    link for a Hub copy, and says so when only the worker's disk has one; nothing else is served."""
    from dlite.files import file_sha256

    rid = create_run(client, backup_dir=str(tmp_path / "dl"))["id"]
    claim(client, register(client))
    folder = tmp_path / "dl" / "runs" / "x" / "checkpoints"
    folder.mkdir(parents=True)
    saved = folder / "ckpt_00000500.pt"
    saved.write_bytes(os.urandom(4096))
    (tmp_path / "secret.txt").write_text("not a checkpoint")
    sha256, size = file_sha256(saved)

    def post(step: int, **fields: object) -> None:
        body = {"attempt": 1, "step": step, "size": size, "sha256": sha256, "backup_state": "hub", **fields}
        assert client.post(f"/api/runs/{rid}/checkpoints", json=body).status_code == 200

    post(500, hub_url=saved.as_uri())
    post(600, hub_url=(tmp_path / "secret.txt").as_uri())  # not named as its checkpoint: never served
    post(700, hub_url="https://huggingface.co/user/r/resolve/main/ckpt_00000700.pt")
    post(800, backup_state="local")
    worker_disk = tmp_path / "work" / "ckpt_00000900.pt"  # the worker's own file, on this machine
    worker_disk.parent.mkdir()
    worker_disk.write_bytes(saved.read_bytes())
    post(900, backup_state="local", local_url=worker_disk.as_uri())
    post(1000, backup_state="local", local_url=worker_disk.as_uri())  # another step's name: never served
    got = client.get(f"/api/runs/{rid}/checkpoints/500/file")
    assert got.status_code == 200 and got.content == saved.read_bytes()
    assert got.headers["x-checkpoint-sha256"] == sha256 and "ckpt_00000500.pt" in got.headers["content-disposition"]
    downloads = {c["step"]: c["download"] for c in client.get(f"/api/runs/{rid}").json()["checkpoints"]}
    assert downloads == {500: "server", 600: "worker", 700: "hub", 800: "worker", 900: "server", 1000: "worker"}
    assert client.get(f"/api/runs/{rid}/checkpoints/900/file").content == saved.read_bytes()
    post(900, backup_state="local", pruned=True)  # keep_local deleted the worker's file: a file there now is not it
    for step, why in (
        (600, "only the worker's disk"),
        (700, "from the Hub"),
        (800, "only the worker's disk"),
        (900, "only the worker's disk"),
        (1000, "only the worker's disk"),
        (1100, "no checkpoint at step 1100"),
    ):
        r = client.get(f"/api/runs/{rid}/checkpoints/{step}/file")
        assert r.status_code == 404 and why in r.json()["detail"], step
    saved.write_bytes(os.urandom(4096))  # changed since it was saved: not the checkpoint any more
    r = client.get(f"/api/runs/{rid}/checkpoints/500/file")
    assert r.status_code == 404 and "differs from the saved checkpoint" in r.json()["detail"]
    with TestClient(create_app(settings)) as anon:
        assert anon.get(f"/api/runs/{rid}/checkpoints/500/file").status_code == 401
    page = client.get(f"/runs/{rid}").text
    assert f'href="/api/runs/{rid}/checkpoints/500/file" download' in page and sha256[:12] in page
    assert 'icon-download" aria-hidden="true"></span> from the Hub' in page and page.count("on the worker only") == 4
