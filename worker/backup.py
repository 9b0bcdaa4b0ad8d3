"""Backups of a run's checkpoints to a storage that outlives the machine: the manifest,
retention and sha256-verified restore shared by every target, and the background queue
that runs them. `worker.hub.HubBackup` (a Hugging Face repo) and
`worker.backup_dir.DirectoryBackup` (a folder, e.g. Google Drive mounted in Colab) only
add their storage's I/O, so the same resume logic serves both.

Layout of a run in the storage::

    runs/<run_key>/checkpoints/ckpt_<step:08d>.pt
    runs/<run_key>/manifest.json   {"checkpoints": {"<step>": {"file", "sha256", "size"}}}
    runs/<run_key>/<extra files>   e.g. metrics.json, figures/loss_curve.png, artifacts/*.webm

The manifest carries each checkpoint's sha256, so a restore rejects a corrupt copy and
falls back to the previous checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dlite.checkpoint_names import checkpoint_name
from dlite.files import file_sha256

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
"""Extra file restored next to the checkpoint so a resumed run keeps its curves."""

_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}")
"""A Hub token: `hf_` and 34 letters today. Only a long run of letters and digits counts, so
names like huggingface_hub/hf_api.py in a traceback stay readable."""

Extras = dict[str, bytes | Path]
StateCallback = Callable[[int, str, str | None, list[int]], None]


class BackupError(RuntimeError):
    """A backup call that failed for good: a non-retryable status, retries exhausted, or
    a storage that cannot be written.

    `status` is the HTTP status (None when the failure had none); `not_found` tells a
    missing repo or file apart, which readers treat as "nothing backed up yet"."""

    def __init__(self, message: str, status: int | None = None, not_found: bool = False) -> None:
        super().__init__(redact(message))
        self.status = status
        self.not_found = not_found


@dataclass(frozen=True)
class BackupResult:
    """What one backup put in the storage; `url` locates the checkpoint (an https URL on
    the Hub, a file:// URL in a folder), `deleted` are the storage paths it removed."""

    step: int
    sha256: str
    size: int
    url: str
    deleted: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RemoteCheckpoint:
    """One manifest entry; `path` is the file's path inside the storage."""

    step: int
    path: str
    sha256: str
    size: int


def redact(text: str) -> str:
    """Masks anything shaped like a Hub token: messages built from server replies end up
    in the dashboard and in logs, and a token must never reach either."""
    token = os.environ.get("HF_TOKEN", "")
    if len(token) >= 8:  # whatever its shape, the token this worker holds is never shown
        text = text.replace(token, "***")
    return _TOKEN.sub("hf_***", text)


def _relative(path: str) -> str:
    """A clean relative POSIX path: extras and run keys must stay inside their run folder."""
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or any(p in ("..", ".") for p in parts):
        raise ValueError(f"not a relative path inside the run folder: {path!r}")
    return "/".join(parts)


class BackupTarget(ABC):
    """Backs up one run's checkpoints under `runs/<run_key>/` of a storage.

    A backup writes the checkpoint, the caller's extras, the new manifest and the
    deletion of checkpoints retention drops (all but the newest and multiples of
    `keep_every`) through `_commit`. Not thread-safe on its own; `BackupQueue`
    serialises the calls of a training run."""

    description = "backup"
    """How messages name the storage, e.g. "Hugging Face Hub"."""

    def __init__(
        self,
        run_key: str,
        keep_every: int,
        min_interval_s: float,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        if keep_every < 1:
            raise ValueError("keep_every must be >= 1")
        self.prefix = f"runs/{_relative(run_key)}"
        self.keep_every = keep_every
        self.min_interval_s = min_interval_s
        self._sleep, self._clock = sleep, clock
        self._last_commit_at: float | None = None
        self._ready = False

    # -- storage I/O, one implementation per target ------------------------------
    @abstractmethod
    def _prepare(self) -> None:
        """Makes the storage ready to be written (creates the repo or folder); harmless
        when it is; raises BackupError saying what to fix when it cannot be."""

    @abstractmethod
    def url_of(self, path: str) -> str:
        """Where a user finds the file at storage path `path`."""

    @abstractmethod
    def _list_files(self) -> list[str]:
        """Every storage path (at least those under the run's folder)."""

    @abstractmethod
    def _commit(self, adds: Extras, deletes: list[str], what: str) -> None:
        """Writes `adds` (storage path -> content, the manifest last) and removes `deletes`
        so that a reader sees either the old manifest or the new one with all its files;
        `what` names the change in commit messages and errors (e.g. "checkpoint step 100")."""

    @abstractmethod
    def _download(self, path: str, dest: Path) -> Path | None:
        """Copies the file at storage path `path` into folder `dest`; None when missing."""

    def where(self) -> str:
        """The storage as a failure message names it, with what a user can check about it."""
        return f"the {self.description}"

    # -- paths ---------------------------------------------------------------
    @property
    def manifest_path(self) -> str:
        return f"{self.prefix}/manifest.json"

    def checkpoint_path(self, step: int) -> str:
        return f"{self.prefix}/checkpoints/{checkpoint_name(step)}"

    # -- public API ----------------------------------------------------------
    def prepare(self) -> None:
        """Makes the storage ready to be written; raises BackupError saying what to fix."""
        self._prepare()
        self._ready = True

    def wait_for_commit_slot(self) -> None:
        """Sleeps until `min_interval_s` has passed since the previous commit, which keeps a
        run far below a storage's rate limits however often checkpoints are saved."""
        if self._last_commit_at is None:
            return
        wait = self._last_commit_at + self.min_interval_s - self._clock()
        if wait > 0:
            self._sleep(wait)

    def backup(self, checkpoint: Path, step: int, extra: Extras) -> BackupResult:
        """Stores `checkpoint` as step `step` with `extra` (paths relative to the run folder
        -> content), together with the new manifest and the deletion of the checkpoints
        that retention drops. Raises BackupError when the storage refuses."""
        checkpoint = Path(checkpoint)
        extra_paths = {f"{self.prefix}/{_relative(name)}": content for name, content in extra.items()}
        reserved = [p for p in extra_paths if p == self.manifest_path or p.startswith(f"{self.prefix}/checkpoints/")]
        if reserved:
            raise ValueError(f"extras may not overwrite the manifest or checkpoints: {reserved}")
        sha256, size = file_sha256(checkpoint)
        if not self._ready:
            self.prepare()
        self.wait_for_commit_slot()

        stored = self._list_files()
        entries = self._read_manifest()
        ckpt_path = self.checkpoint_path(step)
        entries[step] = {"file": ckpt_path, "sha256": sha256, "size": size}
        kept = {s: e for s, e in sorted(entries.items()) if s == step or s % self.keep_every == 0}
        kept_files = {e["file"] for e in kept.values()}
        deleted = sorted(p for p in stored if p.startswith(f"{self.prefix}/checkpoints/") and p not in kept_files)
        manifest = json.dumps({"checkpoints": {str(s): e for s, e in kept.items()}}, indent=2).encode()
        adds: Extras = {ckpt_path: checkpoint, **extra_paths, self.manifest_path: manifest}
        self.write_files(adds, f"{self.prefix}: checkpoint step {step}", deleted)
        log.info("backed up step %d to %s (deleted %d old checkpoints)", step, self.description, len(deleted))
        return BackupResult(step=step, sha256=sha256, size=size, url=self.url_of(ckpt_path), deleted=deleted)

    def write_files(self, adds: Extras, what: str, deletes: list[str] | None = None) -> None:
        """Writes storage paths (a backup's, or the server's own state outside every run's
        folder) in one commit, the last path last, then removes `deletes`; every commit
        goes through here, so all keep `min_interval_s` apart."""
        if not self._ready:
            self.prepare()
        self.wait_for_commit_slot()
        try:
            self._commit(adds, deletes or [], what)
        finally:
            self._last_commit_at = self._clock()

    def read_file(self, path: str, dest: Path) -> Path | None:
        """Copies the file at storage path `path` into folder `dest`; None when missing."""
        return self._download(path, dest)

    def private(self) -> bool:
        """Whether only its owner can read the storage: secrets are stored only where it is."""
        return True

    def remote_checkpoints(self) -> list[RemoteCheckpoint]:
        """The manifest's checkpoints, oldest first; empty when nothing is backed up yet."""
        return [
            RemoteCheckpoint(step=s, path=e["file"], sha256=e["sha256"], size=e["size"])
            for s, e in sorted(self._read_manifest().items())
        ]

    def restore_latest(self, local_dir: Path, folders: Mapping[str, Path] | None = None) -> Path | None:
        """Copies the newest checkpoint whose sha256 matches the manifest into `local_dir`
        under its own name (a corrupt one is deleted and the previous one tried), and
        `metrics.json` next to it when the run has one. None when no checkpoint is valid.

        `folders` maps folders of the run's backup (e.g. "artifacts") to local ones: the files
        the extras put there come back with the checkpoint, so a run resumed on a fresh
        machine still has the videos it recorded before. They carry no hash in the manifest:
        unlike a corrupt checkpoint, a damaged video costs no training."""
        local_dir = Path(local_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        for entry in reversed(self.remote_checkpoints()):
            # Staging inside local_dir keeps the final os.replace on one filesystem: atomic.
            with tempfile.TemporaryDirectory(dir=local_dir, prefix=".restore-") as staging:
                fetched = self._download(entry.path, Path(staging))
                if fetched is None:
                    log.warning(
                        "step %d is in the manifest but not in the %s; trying the previous one",
                        entry.step,
                        self.description,
                    )
                    continue
                if file_sha256(fetched) != (entry.sha256, entry.size):
                    log.warning(
                        "step %d from the %s is corrupt (sha256 mismatch); trying the previous one",
                        entry.step,
                        self.description,
                    )
                    fetched.unlink()
                    continue
                # the folders first: a restore cut short leaves no checkpoint, so the next
                # attempt restores again rather than resuming from it without them
                for folder, dest in (folders or {}).items():
                    self._restore_folder(_relative(folder), Path(dest))
                target = local_dir / PurePosixPath(entry.path).name
                os.replace(fetched, target)
                metrics = self._download(f"{self.prefix}/{METRICS_FILE}", Path(staging))
                if metrics is not None:
                    os.replace(metrics, local_dir / METRICS_FILE)
                log.info("restored step %d from the %s", entry.step, self.description)
                return target
        return None

    def _restore_folder(self, folder: str, dest: Path) -> None:
        """Every file under the run's `folder` into `dest`, keeping the paths below it; each
        replaces its local copy in one step, staged in `dest` so the rename stays on one
        filesystem."""
        source = f"{self.prefix}/{folder}/"
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest, prefix=".restore-") as staging:
            for path in sorted(p for p in self._list_files() if p.startswith(source)):
                fetched = self._download(path, Path(staging))
                if fetched is None:  # deleted since the listing
                    continue
                target = dest / path.removeprefix(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(fetched, target)

    # -- internals -------------------------------------------------------------
    def _read_manifest(self) -> dict[int, dict]:
        with tempfile.TemporaryDirectory(prefix="backup-manifest-") as tmp:
            path = self._download(self.manifest_path, Path(tmp))
            if path is None:
                return {}
            try:
                raw = json.loads(path.read_text())["checkpoints"]
                return {
                    int(s): {"file": e["file"], "sha256": e["sha256"], "size": int(e["size"])} for s, e in raw.items()
                }
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise BackupError(f"{self.manifest_path} in the {self.description} is unreadable: {e}") from None


class BackupSchedule:
    """Decides when training backs up: every `every_steps` steps or every `every_minutes`
    of wall-clock time, whichever comes first (0 turns either off). Users lose GPU time,
    not steps: a slow GPU may take hours between step-based backups."""

    def __init__(self, every_steps: int, every_minutes: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_steps, self.every_s = every_steps, every_minutes * 60
        self._clock = clock
        self._last = clock()

    def time_due(self) -> bool:
        """The wall-clock interval has passed since the last backup (or since training started)."""
        return bool(self.every_s) and self._clock() - self._last >= self.every_s

    def due(self, step: int) -> bool:
        return bool(self.every_steps and step % self.every_steps == 0) or self.time_due()

    def backed_up(self) -> None:
        """A backup was requested now: the time interval starts again."""
        self._last = self._clock()


@dataclass
class _Request:
    checkpoint: Path
    step: int
    extra: Callable[[], Extras]
    listeners: dict[StateCallback, list[int]]
    """Each distinct on_state callback -> the command ids it answers for (superseded ones too)."""


class BackupQueue:
    """Runs a BackupTarget on a background thread so training never waits on the storage.

    Requests arriving while one is waiting for its commit slot or uploading are coalesced:
    only the newest pending checkpoint is uploaded, and the callbacks and command ids of
    the superseded requests get its states. on_state(step, state, detail, command_ids)
    is called with "uploading", then "hub" (backed up; detail: the checkpoint's URL) or
    "error" (detail: the message); step is the uploaded step. A failed backup is reported
    and the thread goes on with the next request.

    `unreachable` says whether the run trains on although its smoke test found the storage
    unreachable (on_backup_failure=warn); it decides how many failed checkpoints `in_use`
    keeps (see there)."""

    def __init__(self, target: BackupTarget, unreachable: Callable[[], bool] = lambda: False) -> None:
        self.target = target
        self._unreachable = unreachable
        self._cond = threading.Condition()
        self._pending: _Request | None = None
        self._current: _Request | None = None
        self._failed: dict[int, Path] = {}
        """Checkpoints whose backup failed and that no later successful backup superseded, by step."""
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"backup-{target.prefix}", daemon=True)
        self._thread.start()

    def request(
        self,
        checkpoint: Path,
        step: int,
        extra: Callable[[], Extras],
        on_state: StateCallback,
        command_id: int | None = None,
    ) -> None:
        """Queues a backup of `checkpoint`; `extra` is called just before the upload so the
        extras (e.g. metrics) are as fresh as the checkpoint that is actually sent."""
        with self._cond:
            if self._closing:
                raise RuntimeError("BackupQueue is closed")
            listeners = dict(self._pending.listeners) if self._pending else {}
            if self._pending:
                log.info("backup of step %d superseded by step %d", self._pending.step, step)
            listeners[on_state] = listeners.get(on_state, []) + ([command_id] if command_id is not None else [])
            self._pending = _Request(Path(checkpoint), step, extra, listeners)
            self._cond.notify_all()

    def in_use(self) -> set[Path]:
        """The checkpoints keep_local must not prune: those queued or being uploaded (pruning
        them would lose the backup), and those whose backup failed, until a backup of the same
        or a newer checkpoint succeeds. Until then this disk holds the only copy of a checkpoint
        that was meant to outlive it (the user can still copy it off by hand); once a newer one
        is stored, a resume starts from that one and the failed one is no longer needed.

        When the smoke test backed up (as on_backup_failure=fail requires), the storage works,
        so a failure is an outage and every checkpoint it hit is kept, however long it lasts. A
        run that trains on with a storage its smoke test found unreachable (on_backup_failure=
        warn) expects every backup to fail: keeping each would grow the disk by a checkpoint per
        backup for the whole run, so only the newest failed one is kept."""
        with self._cond:
            return {r.checkpoint for r in (self._pending, self._current) if r is not None} | set(self._failed.values())

    def close(self, timeout: float | None = None) -> bool:
        """Finishes the pending upload, then stops the thread. True when it has stopped
        within `timeout` (False leaves a daemon thread that dies with the process)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()
                if self._pending is None:
                    return
            # Requests arriving during this wait replace the pending one: they coalesce.
            self.target.wait_for_commit_slot()
            with self._cond:
                request, self._pending = self._pending, None
                self._current = request
            assert request is not None  # only this thread takes the pending request
            self._notify(request, request.step, "uploading", None)
            try:
                result = self.target.backup(request.checkpoint, request.step, request.extra())
            except Exception as e:  # reported to the dashboard; training must go on
                message = redact(str(e) if isinstance(e, BackupError) else f"{type(e).__name__}: {e}")
                log.warning("backup of step %d failed: %s", request.step, message)
                with self._cond:
                    if self._unreachable():
                        self._failed.clear()
                    self._failed[request.step] = request.checkpoint
                self._notify(request, request.step, "error", message)
            else:
                with self._cond:
                    self._failed = {s: p for s, p in self._failed.items() if s > result.step}
                self._notify(request, result.step, "hub", result.url)
            finally:
                with self._cond:
                    self._current = None

    @staticmethod
    def _notify(request: _Request, step: int, state: str, detail: str | None) -> None:
        for on_state, command_ids in request.listeners.items():
            try:
                on_state(step, state, detail, list(command_ids))
            except Exception:  # a broken callback must not stop later backups
                log.exception("backup state callback failed for step %d (%s)", step, state)
