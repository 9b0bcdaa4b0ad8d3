"""The checkpoint ledger on its own: what it reports of one stage's checkpoints, with a recording
outbox and a real backup folder in place of the executor's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dlite import checkpoint
from dlite.checkpoint_names import checkpoint_name
from dlite.files import file_sha256
from tests.app_helpers import wait_for
from worker.backup_dir import DirectoryBackup
from worker.checkpoint_ledger import CheckpointLedger
from worker.client import ServerUnavailable


class Recorder:
    """Stands in for the outbox and the event log, in the order the ledger wrote to them."""

    def __init__(self, listed: Sequence[dict[str, Any]] | Exception = ()) -> None:
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.listed = listed

    def post(self, kind: str, body: dict[str, Any]) -> None:
        self.writes.append((kind, body))

    def event(self, message: str, level: str) -> None:
        self.writes.append(("events", {"level": level, "message": message}))

    def server_checkpoints(self) -> list[dict[str, Any]]:
        if isinstance(self.listed, Exception):
            raise self.listed
        return list(self.listed)

    def checkpoints(self) -> list[dict[str, Any]]:
        return [body for kind, body in self.writes if kind == "checkpoints"]


def save(folder: Path, step: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / checkpoint_name(step)
    path.write_bytes(f"weights of step {step}".encode())
    return path


def ledger(
    folder: Path,
    out: Recorder,
    target: DirectoryBackup | None = None,
    after: int = -1,
    upto: int | None = None,
    unreachable: Callable[[], bool] = lambda: False,
) -> CheckpointLedger:
    return CheckpointLedger(
        folder,
        target,
        after=after,
        upto=upto,
        post=out.post,
        event=out.event,
        listed=out.server_checkpoints,
        extras=lambda: {"metrics.json": b"{}"},
        label="run 1",
        unreachable=unreachable,
    )


def listed(step: int, pruned: bool = False) -> dict[str, Any]:
    return {"step": step, "sha256": f"sha-{step}", "size": step, "pruned": pruned}


def test_a_saved_checkpoint_is_reported_and_its_pruning_once(tmp_path: Path) -> None:
    out = Recorder()
    book = ledger(tmp_path / "ckpt", out)
    first = save(tmp_path / "ckpt", 10)
    book.saved(10, first)
    first.unlink()  # keep_local dropped it
    book.saved(20, save(tmp_path / "ckpt", 20))
    book.saved(30, save(tmp_path / "ckpt", 30))
    reports = out.checkpoints()
    assert [(r["step"], r["pruned"]) for r in reports] == [(10, False), (20, False), (10, True), (30, False)]
    assert reports[0]["local_url"] == first.absolute().as_uri() and reports[0]["backup_state"] == "local"
    assert reports[2]["sha256"] == reports[0]["sha256"] and reports[2]["size"] == reports[0]["size"]
    assert book.pruned == {10}


def test_reconcile_touches_only_its_own_stages_steps(tmp_path: Path) -> None:
    """R1 took steps 10-20; R2's reflow continues at 30. The server lists both stages'."""
    server = [listed(10), listed(20), listed(30), listed(40), listed(50, pruned=True)]
    r1_dir, r2_dir = tmp_path / "checkpoints", tmp_path / "reflow" / "checkpoints"
    save(r1_dir, 20)
    for step in (30, 50, 60):
        save(r2_dir, step)

    out = Recorder(server)
    r2 = ledger(r2_dir, out, after=20)
    r2.reconcile()
    # 30 is listed and on disk: nothing to say; 50 was listed pruned and 60 not at all: reported
    # now; 40 is gone from disk: pruned. R1's 10, gone from R2's folder, is not R2's to prune.
    assert [(r["step"], r["pruned"]) for r in out.checkpoints()] == [(50, False), (60, False), (40, True)]
    assert r2.hashes[30] == ("sha-30", 30)

    out = Recorder(server)
    r1 = ledger(r1_dir, out, upto=20)
    r1.reconcile()
    assert [(r["step"], r["pruned"]) for r in out.checkpoints()] == [(10, True)], "R2's steps are left alone"


def test_a_listed_checkpoint_pruned_later_is_reported_with_the_servers_hash(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    old = save(folder, 10)
    out = Recorder([listed(10)])
    book = ledger(folder, out)
    book.reconcile()
    assert out.writes == []
    old.unlink()
    book.saved(20, save(folder, 20))
    assert out.checkpoints()[-1] == {"step": 10, "size": 10, "sha256": "sha-10", "pruned": True}


def test_reconcile_without_the_server_writes_nothing(tmp_path: Path) -> None:
    save(tmp_path / "ckpt", 10)
    out = Recorder(ServerUnavailable("down"))
    ledger(tmp_path / "ckpt", out).reconcile()
    assert out.writes == []


def test_a_backup_command_without_target_or_checkpoint_is_answered(tmp_path: Path) -> None:
    out = Recorder()
    assert ledger(tmp_path / "ckpt", out).back_up_newest(7) is False
    with_target = ledger(tmp_path / "ckpt", out, DirectoryBackup(tmp_path / "drive", "run-1"))
    assert with_target.back_up_newest(8) is False
    assert with_target.back_up_newest(None) is False, "no command, no answer"
    assert with_target.close(timeout=10)
    assert out.writes == [
        ("commands/7", {"state": "error", "detail": "no backup target configured (set hub_repo or backup_dir)"}),
        ("commands/8", {"state": "error", "detail": "no checkpoint yet"}),
    ]


def test_backing_up_reports_its_states_and_answers_the_command(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    save(folder, 10)
    newest = save(folder, 20)  # saved by an earlier attempt: hashed on demand
    out = Recorder()
    book = ledger(folder, out, DirectoryBackup(tmp_path / "drive", "run-1"))
    assert book.back_up_newest(3) is True
    assert book.close(timeout=30)
    sha256, size = file_sha256(newest)
    url = (tmp_path / "drive" / "runs" / "run-1" / "checkpoints" / checkpoint_name(20)).absolute().as_uri()
    assert out.writes == [
        (
            "checkpoints",
            {"step": 20, "size": size, "sha256": sha256, "backup_state": "uploading", "hub_url": None, "error": None},
        ),
        ("commands/3", {"state": "uploading", "detail": None}),
        (
            "checkpoints",
            {"step": 20, "size": size, "sha256": sha256, "backup_state": "hub", "hub_url": url, "error": None},
        ),
        ("commands/3", {"state": "done", "detail": url}),
    ]
    assert (tmp_path / "drive" / "runs" / "run-1" / "metrics.json").read_bytes() == b"{}"


def test_a_failed_backup_is_reported_and_training_goes_on(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    out = Recorder()
    book = ledger(folder, out, DirectoryBackup(tmp_path / "not-mounted" / "drive", "run-1"))
    book.saved(10, save(folder, 10))
    assert book.back_up_newest(None) is True
    assert book.close(timeout=30)
    states = [(kind, body.get("backup_state"), body.get("level")) for kind, body in out.writes]
    assert states == [
        ("checkpoints", "local", None),
        ("checkpoints", "uploading", None),
        ("checkpoints", "error", None),
        ("events", None, "warning"),
    ]
    assert "does not exist" in out.writes[2][1]["error"]
    assert out.writes[3][1]["message"].startswith("backup of step 10 failed: ")


ENDS = ("hub", "error")
"""The backup states that end a backup."""


def _back_up(book: CheckpointLedger, out: Recorder, step: int) -> str:
    """Saves step `step`, backs it up, and returns how its backup ended ("hub" or "error")."""
    book.saved(step, save(book.folder, step))
    assert book.back_up_newest(None)

    def ended() -> list[str]:
        return [r["backup_state"] for r in out.checkpoints() if r["step"] == step and r.get("backup_state") in ENDS]

    wait_for(lambda: bool(ended()), 30, f"the backup of step {step}")
    [state] = ended()
    return state


def _keep_local_1(book: CheckpointLedger) -> list[int | None]:
    """What the trainer's keep_local=1 pruning leaves, protecting what the ledger says."""
    checkpoint.prune(book.folder, 1, book.in_use())
    return [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(book.folder)]


def test_a_checkpoint_whose_backup_failed_stays_until_a_newer_backup_succeeds(tmp_path: Path) -> None:
    """The storage works (the smoke test backed up, on_backup_failure=fail), then goes away:
    every checkpoint a backup failed to store stays on disk through keep_local, and all go
    once a newer one is stored."""
    drive = tmp_path / "drive"  # its folder's parent is missing: unmounted, every backup fails
    out = Recorder()
    book = ledger(tmp_path / "ckpt", out, DirectoryBackup(drive / "dl", "run-1"))
    assert _back_up(book, out, 10) == "error"
    book.saved(20, save(book.folder, 20))
    assert _keep_local_1(book) == [10, 20]
    assert _back_up(book, out, 30) == "error"
    book.saved(40, save(book.folder, 40))
    assert _keep_local_1(book) == [10, 30, 40], "both failed ones are kept, the never-queued 20 is not"
    drive.mkdir()  # mounted again
    assert _back_up(book, out, 50) == "hub"
    assert _keep_local_1(book) == [50], "step 50 is stored: the failed ones are no longer needed"
    assert book.close(timeout=30)


def test_with_a_storage_found_unreachable_only_the_newest_failed_checkpoint_stays(tmp_path: Path) -> None:
    """The run trains on although its smoke test could not back up (on_backup_failure=warn):
    every backup is expected to fail, so the disk keeps one failed checkpoint, not one per backup."""
    out = Recorder()
    book = ledger(tmp_path / "ckpt", out, DirectoryBackup(tmp_path / "drive" / "dl", "run-1"), unreachable=lambda: True)
    assert _back_up(book, out, 10) == "error"
    book.saved(20, save(book.folder, 20))
    assert _keep_local_1(book) == [10, 20]
    assert _back_up(book, out, 30) == "error"
    book.saved(40, save(book.folder, 40))
    assert _keep_local_1(book) == [30, 40]
    assert book.close(timeout=30)
