"""The server's state (database and generated token) saved to a run's kind of storage and
restored on a machine that has none: a folder (Google Drive) and the Hub (a fake client)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from hashlib import sha256
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.db import Database
from app.main import create_app
from app.models import Run
from app.settings import STATE_STATUS_FILE
from tests.app_helpers import ROOT, free_port, subprocess_env, wait_for
from tests.fake_hub import FakeHubApi
from worker.backup import BackupError, Extras
from worker.backup_dir import DirectoryBackup
from worker.hub import HubBackup
from worker.state_backup import (
    LAB_ID_FILE,
    STATE_FILE,
    STATE_KEY,
    StateBackup,
    artifact_rows,
    restore,
)

TOKEN = "a-generated-token-of-enough-length-0123456789"


def lab_database(data_dir: Path, names: tuple[str, ...] = ("first", "second")) -> Path:
    """A migrated lab database with runs in it, written through the server's own engine."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "dlite.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    with db.write() as session:
        for name in names:
            session.add(
                Run(task="hopper-medium-v2", name=name, config={}, total_steps=10, created_at=1.0, updated_at=1.0)
            )
    db.dispose()
    return path


def run_names(path: Path) -> list[str]:
    with sqlite3.connect(path) as c:
        return [n for (n,) in c.execute("SELECT name FROM runs ORDER BY id")]


def folder(root: Path) -> DirectoryBackup:
    return DirectoryBackup(root, STATE_KEY)


def saved(root: Path) -> dict:
    return json.loads((root / STATE_FILE).read_text())


def snapshots(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "server").glob("dlite-*.db.gz"))


def test_folder_round_trip_keeps_runs_and_token_and_the_snapshot_before(tmp_path: Path) -> None:
    drive = tmp_path / "drive" / "lab"
    (tmp_path / "drive").mkdir()
    old = tmp_path / "old#1"  # a URI-special folder name must not become another (empty) database
    database = lab_database(old)
    lab = restore(folder(drive), old, use_saved_token=True)
    assert not lab.restored and "using the local database" in lab.message
    assert (old / LAB_ID_FILE).read_text().strip() == lab.lab_id
    logged: list[str] = []
    clock = iter(range(1_000_000_000, 1_000_001_000, 10))
    state = StateBackup(
        folder(drive), old, lab.lab_id, TOKEN, every_s=60, log=logged.append, clock=lambda: float(next(clock))
    )
    assert state.save() is True
    assert state.save() is False, "an unchanged database is not uploaded again"
    for note in ("one", "two"):
        with sqlite3.connect(database) as c:
            c.execute("UPDATE runs SET note = ? WHERE id = 2", (note,))
        assert state.save() is True
    state_json = saved(drive)
    assert state_json["token"] == TOKEN and state_json["lab_id"] == lab.lab_id and not logged
    assert snapshots(drive) == sorted(Path(state_json[k]["file"]).name for k in ("database", "previous")), (
        "the newest snapshot and the one before it, no older ones"
    )

    new = tmp_path / "new"  # a fresh machine
    result = restore(folder(drive), new, use_saved_token=True)
    assert result.restored and result.lab_id == lab.lab_id and "restored the server state saved at" in result.message
    assert run_names(new / "dlite.db") == ["first", "second"]
    with sqlite3.connect(new / "dlite.db") as c:
        assert c.execute("SELECT note FROM runs WHERE id = 2").fetchone() == ("two",)
    assert (new / "token").read_text().strip() == TOKEN
    assert oct((new / "token").stat().st_mode & 0o777) == "0o600"
    again = restore(folder(drive), new, use_saved_token=True)
    assert not again.restored and "using the local database" in again.message, "a local database is newer"

    (drive / state_json["database"]["file"]).unlink()  # Drive has not synced the newest snapshot yet
    fallback = tmp_path / "fallback"
    assert restore(folder(drive), fallback, use_saved_token=False).restored
    with sqlite3.connect(fallback / "dlite.db") as c:
        assert c.execute("SELECT note FROM runs WHERE id = 2").fetchone() == ("one",), "the snapshot before"
    assert not (fallback / "token").exists(), "DLITE_TOKEN set: the saved token is not used"


def test_restore_refuses_corrupt_snapshots_an_unmounted_drive_and_another_labs_database(tmp_path: Path) -> None:
    lab = restore(folder(tmp_path / "drive"), lab_database(tmp_path / "old").parent, use_saved_token=True)
    StateBackup(folder(tmp_path / "drive"), tmp_path / "old", lab.lab_id, None, every_s=60).save()
    assert "token" not in saved(tmp_path / "drive"), "a token from DLITE_TOKEN is not saved"
    snapshot = tmp_path / "drive" / saved(tmp_path / "drive")["database"]["file"]
    snapshot.write_bytes(snapshot.read_bytes()[:-10])
    with pytest.raises(BackupError, match="corrupt.*nothing was changed"):
        restore(folder(tmp_path / "drive"), tmp_path / "new", use_saved_token=True)
    assert not (tmp_path / "new" / "dlite.db").exists()

    other = lab_database(tmp_path / "laptop", ("mine",)).parent
    with pytest.raises(BackupError, match="holds the saved state of another lab"):
        restore(folder(tmp_path / "drive"), other, use_saved_token=True)
    assert run_names(other / "dlite.db") == ["mine"]

    unmounted = folder(tmp_path / "content" / "drive" / "MyDrive" / "lab")
    with pytest.raises(BackupError, match="mount Google Drive"):
        restore(unmounted, tmp_path / "other", use_saved_token=True)
    fresh = restore(folder(tmp_path / "empty"), tmp_path / "third", use_saved_token=True)
    assert not fresh.restored and "starting a new lab" in fresh.message


def test_a_second_machine_takes_the_storage_over_and_the_first_stops_saving(tmp_path: Path) -> None:
    drive = tmp_path / "drive"
    database = lab_database(tmp_path / "a")
    lab = restore(folder(drive), tmp_path / "a", use_saved_token=True)
    first = StateBackup(folder(drive), tmp_path / "a", lab.lab_id, TOKEN, every_s=60, log=lambda _: None)
    assert first.save()
    assert restore(folder(drive), tmp_path / "b", use_saved_token=True).restored  # the same lab, elsewhere
    second = StateBackup(folder(drive), tmp_path / "b", lab.lab_id, TOKEN, every_s=60, log=lambda _: None)
    assert second.save()
    taken = saved(drive)
    with sqlite3.connect(database) as c:
        c.execute("UPDATE runs SET note = 'stale' WHERE id = 1")
    assert not first.save() and first.superseded.is_set()
    assert saved(drive) == taken, "the first machine did not overwrite the second's state"
    assert "another machine" in first.close(timeout=5)


def test_hub_keeps_the_token_only_in_a_private_repo_and_reports_failures_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    lab_database(tmp_path / "old")
    api = FakeHubApi()
    lab = restore(HubBackup("me/lab", STATE_KEY, api=api.as_hf_api()), tmp_path / "old", use_saved_token=True)
    assert StateBackup(
        HubBackup("me/lab", STATE_KEY, api=api.as_hf_api(), min_interval_s=0),
        tmp_path / "old",
        lab.lab_id,
        TOKEN,
        every_s=60,
    ).save()
    assert api.private["me/lab"] is True and json.loads(api.repos["me/lab"][STATE_FILE])["token"] == TOKEN
    assert [c["message"] for c in api.commits] == ["server state"], "snapshot and state.json in one commit"
    restored = restore(HubBackup("me/lab", STATE_KEY, api=api.as_hf_api()), tmp_path / "new", use_saved_token=True)
    assert restored.restored and run_names(tmp_path / "new" / "dlite.db") == ["first", "second"]

    api.create_repo("me/public", private=False)
    logged: list[str] = []
    public = StateBackup(
        HubBackup("me/public", STATE_KEY, api=api.as_hf_api(), min_interval_s=0),
        tmp_path / "old",
        lab.lab_id,
        TOKEN,
        every_s=60,
        log=logged.append,
    )
    assert public.save() and "token" not in json.loads(api.repos["me/public"][STATE_FILE])
    assert any("is public" in line for line in logged)

    failing = StateBackup(
        HubBackup("me/lab", STATE_KEY, api=api.as_hf_api(), min_interval_s=0, max_retries=0),
        tmp_path / "old",
        lab.lab_id,
        TOKEN,
        every_s=60,
        log=logged.append,
    )
    api.fail["create_commit"] = [(403, {}), (403, {})]
    logged.clear()
    assert not failing.save() and not failing.save()
    assert len(logged) == 1 and "saving the server state" in logged[0] and "HTTP 403" in logged[0]
    status = json.loads((tmp_path / "old" / STATE_STATUS_FILE).read_text())
    assert status["ok"] is False and "HTTP 403" in status["message"]
    assert failing.save() and logged[-1].endswith("again")
    assert json.loads((tmp_path / "old" / STATE_STATUS_FILE).read_text())["ok"] is True


ARTIFACTS = {
    (1, "R1-final-1000.webm"): b"\x1a\x45\xdf\xa3 first video",
    (1, "R1-final-1000.plans.json"): b"{}",
    (2, "R2-quick-500.webm"): b"\x1a\x45\xdf\xa3 second video",
}


def add_artifacts(data_dir: Path, files: dict[tuple[int, str], bytes]) -> None:
    """Rows and files as the server keeps them (app/services/artifacts.py), without its checks."""
    with sqlite3.connect(data_dir / "dlite.db") as c:
        for (run_id, name), data in files.items():
            (data_dir / "artifacts" / str(run_id)).mkdir(parents=True, exist_ok=True)
            (data_dir / "artifacts" / str(run_id) / name).write_bytes(data)
            c.execute(
                "INSERT INTO artifacts (run_id, name, kind, variant, eval_kind, step, size, sha256, created_at) "
                "VALUES (?, ?, 'video', 'R1', 'final', 1, ?, ?, 1.0)",
                (run_id, name, len(data), sha256(data).hexdigest()),
            )


def artifact_files(data_dir: Path) -> dict[tuple[int, str], bytes]:
    return {(int(p.parent.name), p.name): p.read_bytes() for p in (data_dir / "artifacts").glob("*/*")}


class RecordingFolder(DirectoryBackup):
    """A backup folder that remembers what each write added and deleted."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, STATE_KEY)
        self.writes: list[tuple[list[str], list[str]]] = []

    def write_files(self, adds: Extras, what: str, deletes: list[str] | None = None) -> None:
        self.writes.append((sorted(adds), sorted(deletes or [])))
        super().write_files(adds, what, deletes)


def test_artifact_files_go_with_the_snapshot_and_come_back_verified(tmp_path: Path) -> None:
    drive, old = tmp_path / "drive", tmp_path / "old"
    database = lab_database(old)
    add_artifacts(old, ARTIFACTS)
    add_artifacts(old, {(2, "R2-final-9.webm"): b"never written", (1, "R2-final-9.webm"): b"as uploaded"})
    (old / "artifacts" / "2" / "R2-final-9.webm").unlink()
    (old / "artifacts" / "1" / "R2-final-9.webm").write_bytes(b"replaced since")
    lab = restore(folder(drive), old, use_saved_token=True)
    target = RecordingFolder(drive)
    logged: list[str] = []
    state = StateBackup(target, old, lab.lab_id, None, every_s=60, log=logged.append)
    assert state.save()
    stored = {f"server/artifacts/{run_id}/{name}" for run_id, name in ARTIFACTS}
    assert set(target.writes[-1][0]) == stored | {STATE_FILE, saved(drive)["database"]["file"]}, "one write"
    assert sorted(line.split(": ")[-1].split(" ", 1)[1] for line in logged) == [
        "differs from its row (sha256 or size)",
        "is missing",
    ], "left out, and the backup goes on"
    assert set(saved(drive)["artifacts"]) == {f"{run_id}/{name}" for run_id, name in ARTIFACTS}

    with sqlite3.connect(database) as c:
        c.execute("UPDATE runs SET note = 'changed' WHERE id = 1")
    assert state.save() and not any(p.startswith("server/artifacts/") for p in target.writes[-1][0]), (
        "unchanged artifacts are not uploaded again"
    )
    assert len(logged) == 2, "a file left out is said once"

    result = restore(folder(drive), tmp_path / "new", use_saved_token=True)
    assert result.restored and "; 3 of its 5 artifact files came back, 2 did not" in result.message
    assert artifact_files(tmp_path / "new") == ARTIFACTS
    assert run_names(tmp_path / "new" / "dlite.db") == ["first", "second"]

    (drive / "server/artifacts/1/R1-final-1000.webm").write_bytes(b"bit rot")
    logged.clear()
    result = restore(folder(drive), tmp_path / "rotten", use_saved_token=True, log=logged.append)
    assert result.restored and "; 2 of its 5 artifact files came back, 3 did not" in result.message
    assert artifact_files(tmp_path / "rotten") == {k: v for k, v in ARTIFACTS.items() if k[1] != "R1-final-1000.webm"}
    assert len(logged) == 1 and "R1-final-1000.webm" in logged[0] and "corrupt" in logged[0]

    with sqlite3.connect(database) as c:  # the run is deleted: its rows cascade, its files go (runs.delete_run)
        c.execute("DELETE FROM artifacts WHERE run_id = 2")
        c.execute("DELETE FROM runs WHERE id = 2")
    assert state.save()
    assert "server/artifacts/2/R2-quick-500.webm" in target.writes[-1][1]
    assert not (drive / "server/artifacts/2/R2-quick-500.webm").exists()
    assert set(saved(drive)["artifacts"]) == {"1/R1-final-1000.webm", "1/R1-final-1000.plans.json"}


def test_states_without_artifacts_stay_readable_and_the_hub_gets_them_in_one_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    old_db = tmp_path / "older.db"  # a lab database from before migration 0012
    with sqlite3.connect(old_db) as c:
        c.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY)")
    assert artifact_rows(old_db) == {}

    lab_database(tmp_path / "old")
    add_artifacts(tmp_path / "old", ARTIFACTS)
    api = FakeHubApi()
    lab = restore(HubBackup("me/lab", STATE_KEY, api=api.as_hf_api()), tmp_path / "old", use_saved_token=True)
    state = StateBackup(
        HubBackup("me/lab", STATE_KEY, api=api.as_hf_api(), min_interval_s=0),
        tmp_path / "old",
        lab.lab_id,
        None,
        every_s=60,
    )
    assert state.save()
    assert (
        len(api.commits) == 1
        and {f"server/artifacts/{r}/{n}" for r, n in ARTIFACTS} <= set(api.commits[0]["added"])
        and api.commits[0]["added"][-1] == STATE_FILE
    )
    api.corrupt.add("server/artifacts/2/R2-quick-500.webm")
    result = restore(
        HubBackup("me/lab", STATE_KEY, api=api.as_hf_api()), tmp_path / "new", use_saved_token=True, log=lambda _: None
    )
    assert "; 2 of its 3 artifact files came back, 1 did not" in result.message
    assert artifact_files(tmp_path / "new") == {k: v for k, v in ARTIFACTS.items() if k[0] == 1}

    older = json.loads(api.repos["me/lab"][STATE_FILE])  # as a lab from before artifacts saves it
    del older["artifacts"]
    api.repos["me/lab"][STATE_FILE] = json.dumps(older).encode()
    result = restore(HubBackup("me/lab", STATE_KEY, api=api.as_hf_api()), tmp_path / "third", use_saved_token=True)
    assert result.restored and "; 0 of its 3 artifact files came back" in result.message
    with sqlite3.connect(tmp_path / "old" / "dlite.db") as c:
        c.execute("UPDATE runs SET note = 'changed' WHERE id = 1")
    assert state.save() and len([p for p in api.commits[-1]["added"] if p.startswith("server/artifacts/")]) == 3, (
        "a state.json without the record: the files are uploaded again"
    )


def test_every_page_says_when_the_server_state_is_not_being_saved(settings) -> None:
    with TestClient(create_app(settings)) as c:
        c.post("/login", data={"token": settings.token, "next": "/"})
        assert 'id="state-problem"' not in c.get("/").text
        (settings.data_dir / STATE_STATUS_FILE).write_text(
            json.dumps({"ok": False, "message": "saving it to the Hugging Face Hub failed: HTTP 403", "at": 1.0})
        )
        for page in ("/", "/sweeps", "/results"):
            shown = c.get(page).text
            assert 'id="state-problem"' in shown and "HTTP 403" in shown, page
        (settings.data_dir / STATE_STATUS_FILE).write_text(json.dumps({"ok": True, "message": "saved", "at": 2.0}))
        assert 'id="state-problem"' not in c.get("/").text


def start_up(data_dir: Path, port: int, drive: Path, log: Path, every_minutes: str) -> subprocess.Popen:
    env = subprocess_env()
    env.pop("DLITE_TOKEN", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "up",
            "--no-worker",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--backup-dir",
            str(drive),
            "--state-every-minutes",
            every_minutes,
        ],
        cwd=ROOT,
        env=env,
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def runs_in_backup(drive: Path, scratch: Path) -> list[tuple[str, str | None]]:
    """(name, note) of each run in the saved snapshot, read the way a restore reads it."""
    try:
        restore(folder(drive), scratch, use_saved_token=False)
    except BackupError:
        return []
    rows = []
    if (scratch / "dlite.db").exists():
        with sqlite3.connect(scratch / "dlite.db") as c:
            rows = list(c.execute("SELECT name, note FROM runs ORDER BY id"))
    for f in scratch.iterdir():
        f.unlink()
    return rows


def test_dlite_up_saves_the_state_and_a_fresh_machine_gets_the_same_lab(tmp_path: Path) -> None:
    """A disconnect (SIGKILL of every process, the data directory gone) loses at most one
    interval: the same token, run ids, names and notes come back, ids are not reused, and
    Ctrl-C saves what changed since the last save."""
    drive, port, log = tmp_path / "drive", free_port(), tmp_path / "up.log"
    drive.mkdir()
    url = f"http://127.0.0.1:{port}"
    proc = start_up(tmp_path / "vm1", port, drive / "lab", log, every_minutes="0.05")
    try:
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200, 60, "dlite up")
        token = (tmp_path / "vm1" / "token").read_text().strip()
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        ids = [api.post("/api/runs", json={"task": "hopper-medium-v2", "name": f"r{i}"}).json()["id"] for i in range(3)]
        assert api.patch(f"/api/runs/{ids[1]}", json={"note": "keep me", "tags": ["paper"]}).status_code == 200
        assert api.delete(f"/api/runs/{ids[2]}").status_code == 200
        # the note and the deletion both: a snapshot taken before r2 existed also lists r0 and r1 alone
        wait_for(
            lambda: runs_in_backup(drive / "lab", tmp_path / "peek") == [("r0", None), ("r1", "keep me")],
            60,
            "a saved state with the note and the deletion",
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    proc = start_up(tmp_path / "vm2", port, drive / "lab", log, every_minutes="600")
    try:
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200, 60, "dlite up again")
        assert (tmp_path / "vm2" / "token").read_text().strip() == token, "the same token"
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        runs = {r["id"]: r for r in api.get("/api/runs").json()}
        assert sorted(runs) == ids[:2] and runs[ids[1]]["note"] == "keep me" and runs[ids[1]]["tags"] == ["paper"]
        assert "restored the server state saved at" in log.read_text()
        late = api.post("/api/runs", json={"task": "hopper-medium-v2", "name": "late"}).json()["id"]
        assert late > ids[2], "the deleted run's id is not handed out again"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert "server state saved to the backup folder" in log.read_text()
    assert [name for name, _ in runs_in_backup(drive / "lab", tmp_path / "peek")] == ["r0", "r1", "late"], (
        "Ctrl-C saved the last run"
    )
