"""Checkpoint backup to, and restore from, a private Hugging Face Hub model repo.

A free Colab GPU can vanish at any moment, so every backup is ONE Hub commit that
holds the checkpoint, the updated manifest, the caller's extras and the deletions of
checkpoints no longer retained: the remote repo is never half-updated. The manifest
carries each checkpoint's sha256 so a restore can reject a corrupt download and fall
back to the previous checkpoint.

The Hub token lives only in this process: `HfApi()` reads it from HF_TOKEN or the
local login by itself. This module never reads, logs or returns it, and the messages
it builds from Hub responses are passed through `_redact` in case a server echoes one.

Layout of a run in the repo::

    runs/<run_key>/checkpoints/ckpt_<step:08d>.pt
    runs/<run_key>/manifest.json   {"checkpoints": {"<step>": {"file", "sha256", "size"}}}
    runs/<run_key>/<extra files>   e.g. metrics.json, figures/loss_curve.png
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, TypeVar

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError,
                                    RevisionNotFoundError)

from dlite.checkpoint import checkpoint_name

log = logging.getLogger(__name__)

HUB_URL = "https://huggingface.co"
REPO_TYPE = "model"
BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 300.0
METRICS_FILE = "metrics.json"
"""Extra file restored next to the checkpoint so a resumed run keeps its curves."""

_TOKEN = re.compile(r"hf_\w+")
_NOT_FOUND = (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
T = TypeVar("T")

Extras = dict[str, bytes | Path]
StateCallback = Callable[[int, str, str | None, list[int]], None]


class BackupError(RuntimeError):
    """A Hub call that failed for good: a non-retryable status, or retries exhausted.

    `status` is the HTTP status (None when the failure had none); `not_found` tells a
    missing repo or file apart, which readers treat as "nothing backed up yet"."""

    def __init__(self, message: str, status: int | None = None, not_found: bool = False) -> None:
        super().__init__(redact(message))
        self.status = status
        self.not_found = not_found


@dataclass(frozen=True)
class BackupResult:
    """What one backup commit put on the Hub; `deleted` are the repo paths it removed."""

    step: int
    sha256: str
    size: int
    url: str
    deleted: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RemoteCheckpoint:
    """One manifest entry; `path` is the file's path inside the repo."""

    step: int
    path: str
    sha256: str
    size: int


def redact(text: str) -> str:
    """Masks anything shaped like a Hub token: messages built from server replies end up
    in the dashboard and in logs, and a token must never reach either."""
    return _TOKEN.sub("hf_***", text)


def file_sha256(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in 1 MiB chunks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _http_error(exc: BaseException) -> HfHubHTTPError | None:
    """The HTTP error behind `exc`. hf_hub_download wraps a 429/5xx on its metadata call in
    a LocalEntryNotFoundError raised *from* the HfHubHTTPError, so follow the cause chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, HfHubHTTPError):
            return seen
        seen = seen.__cause__
    return None


def _retry_after(error: HfHubHTTPError) -> float | None:
    """Retry-After in seconds, or None when absent or not a number of seconds."""
    value = error.response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _relative(path: str) -> str:
    """A clean relative POSIX path: extras and run keys must stay inside their run folder."""
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or any(p in ("..", ".") for p in parts):
        raise ValueError(f"not a relative path inside the run folder: {path!r}")
    return "/".join(parts)


class HubBackup:
    """Backs up one run's checkpoints to `repo_id` under `runs/<run_key>/`.

    Not thread-safe on its own; `BackupQueue` serialises the calls of a training run."""

    def __init__(self, repo_id: str, run_key: str, api: HfApi | None = None, keep_every: int = 5000,
                 min_interval_s: float = 60.0, max_retries: int = 6,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        if keep_every < 1:
            raise ValueError("keep_every must be >= 1")
        self.repo_id = repo_id
        self.prefix = f"runs/{_relative(run_key)}"
        self.api = api if api is not None else HfApi()
        self.keep_every = keep_every
        self.min_interval_s = min_interval_s
        self.max_retries = max_retries
        self._sleep, self._clock = sleep, clock
        self._last_commit_at: float | None = None
        self._repo_ready = False

    # -- paths ---------------------------------------------------------------
    @property
    def manifest_path(self) -> str:
        return f"{self.prefix}/manifest.json"

    def checkpoint_path(self, step: int) -> str:
        return f"{self.prefix}/checkpoints/{checkpoint_name(step)}"

    def url_of(self, path_in_repo: str) -> str:
        return f"{HUB_URL}/{self.repo_id}/blob/main/{path_in_repo}"

    # -- public API ----------------------------------------------------------
    def ensure_repo(self) -> None:
        """Creates the private repo if missing; harmless when it exists."""
        self._call("create repo", lambda: self.api.create_repo(
            self.repo_id, private=True, exist_ok=True, repo_type=REPO_TYPE))
        self._repo_ready = True

    def wait_for_commit_slot(self) -> None:
        """Sleeps until `min_interval_s` has passed since the previous commit, which keeps a
        run far below the Hub's commit rate limits however often checkpoints are saved."""
        if self._last_commit_at is None:
            return
        wait = self._last_commit_at + self.min_interval_s - self._clock()
        if wait > 0:
            self._sleep(wait)

    def backup(self, checkpoint: Path, step: int, extra: Extras) -> BackupResult:
        """Uploads `checkpoint` as step `step` with `extra` (paths relative to the run folder
        -> content) in one commit, together with the new manifest and the deletion of the
        checkpoints that retention drops. Raises BackupError when the Hub refuses."""
        checkpoint = Path(checkpoint)
        extra_paths = {f"{self.prefix}/{_relative(name)}": content for name, content in extra.items()}
        reserved = [p for p in extra_paths if p == self.manifest_path or p.startswith(f"{self.prefix}/checkpoints/")]
        if reserved:
            raise ValueError(f"extras may not overwrite the manifest or checkpoints: {reserved}")
        sha256, size = file_sha256(checkpoint)
        if not self._repo_ready:
            self.ensure_repo()
        self.wait_for_commit_slot()

        remote_files = self._call("list repo files",
                                  lambda: self.api.list_repo_files(self.repo_id, repo_type=REPO_TYPE))
        entries = self._read_manifest()
        ckpt_path = self.checkpoint_path(step)
        entries[step] = {"file": ckpt_path, "sha256": sha256, "size": size}
        kept = {s: e for s, e in sorted(entries.items()) if s == step or s % self.keep_every == 0}
        kept_files = {e["file"] for e in kept.values()}
        deleted = sorted(p for p in remote_files
                         if p.startswith(f"{self.prefix}/checkpoints/") and p not in kept_files)
        manifest = json.dumps({"checkpoints": {str(s): e for s, e in kept.items()}}, indent=2).encode()

        def operations() -> list[CommitOperationAdd | CommitOperationDelete]:
            # Built afresh for every attempt: create_commit mutates its operations.
            ops: list[CommitOperationAdd | CommitOperationDelete] = [
                CommitOperationAdd(path_in_repo=ckpt_path, path_or_fileobj=str(checkpoint)),
                CommitOperationAdd(path_in_repo=self.manifest_path, path_or_fileobj=manifest)]
            ops += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=c if isinstance(c, bytes) else str(c))
                    for p, c in extra_paths.items()]
            return ops + [CommitOperationDelete(path_in_repo=p) for p in deleted]

        try:
            self._call(f"commit of step {step}", lambda: self.api.create_commit(
                self.repo_id, operations(), commit_message=f"{self.prefix}: checkpoint step {step}",
                repo_type=REPO_TYPE))
        finally:
            self._last_commit_at = self._clock()
        log.info("backed up step %d to %s (deleted %d old checkpoints)", step, self.repo_id, len(deleted))
        return BackupResult(step=step, sha256=sha256, size=size, url=self.url_of(ckpt_path), deleted=deleted)

    def remote_checkpoints(self) -> list[RemoteCheckpoint]:
        """The manifest's checkpoints, oldest first; empty when the repo or manifest is missing."""
        return [RemoteCheckpoint(step=s, path=e["file"], sha256=e["sha256"], size=e["size"])
                for s, e in sorted(self._read_manifest().items())]

    def restore_latest(self, local_dir: Path) -> Path | None:
        """Downloads the newest checkpoint whose sha256 matches the manifest into `local_dir`
        under its own name (a corrupt one is deleted and the previous one tried), and
        `metrics.json` next to it when the run has one. None when no checkpoint is valid."""
        local_dir = Path(local_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        for entry in reversed(self.remote_checkpoints()):
            # Staging inside local_dir keeps the final os.replace on one filesystem: atomic.
            with tempfile.TemporaryDirectory(dir=local_dir, prefix=".hub-restore-") as staging:
                downloaded = self._download(entry.path, Path(staging))
                if downloaded is None:
                    log.warning("step %d is in the manifest but not in the repo; trying the previous one", entry.step)
                    continue
                if file_sha256(downloaded) != (entry.sha256, entry.size):
                    log.warning("step %d downloaded from the Hub is corrupt (sha256 mismatch); "
                                "trying the previous one", entry.step)
                    downloaded.unlink()
                    continue
                target = local_dir / PurePosixPath(entry.path).name
                os.replace(downloaded, target)
                metrics = self._download(f"{self.prefix}/{METRICS_FILE}", Path(staging))
                if metrics is not None:
                    os.replace(metrics, local_dir / METRICS_FILE)
                log.info("restored step %d from %s", entry.step, self.repo_id)
                return target
        return None

    # -- internals -------------------------------------------------------------
    def _read_manifest(self) -> dict[int, dict]:
        with tempfile.TemporaryDirectory(prefix="hub-manifest-") as tmp:
            path = self._download(self.manifest_path, Path(tmp))
            if path is None:
                return {}
            try:
                raw = json.loads(path.read_text())["checkpoints"]
                return {int(s): {"file": e["file"], "sha256": e["sha256"], "size": int(e["size"])}
                        for s, e in raw.items()}
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise BackupError(f"{self.manifest_path} in {self.repo_id} is unreadable: {e}") from None

    def _download(self, path_in_repo: str, dest: Path) -> Path | None:
        """hf_hub_download into `dest`; None when the repo or the file does not exist."""
        try:
            return Path(self._call(f"download of {path_in_repo}", lambda: self.api.hf_hub_download(
                self.repo_id, path_in_repo, repo_type=REPO_TYPE, local_dir=dest)))
        except BackupError as e:
            if e.not_found:
                return None
            raise

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Runs one Hub call, retrying 429 and 5xx with exponential backoff (2, 4, 8 ... s,
        capped at 300 s) or the server's Retry-After; any other HTTP error fails at once.
        Errors without an HTTP status (no network at all) propagate unchanged."""
        attempt = 0
        while True:
            try:
                return fn()
            except (HfHubHTTPError, OSError) as exc:
                error = _http_error(exc)
                if error is None:
                    raise
                status = error.response.status_code
                retryable = status == 429 or status >= 500
                if not retryable or attempt >= self.max_retries:
                    tries = f" after {attempt + 1} attempts" if retryable else ""
                    reason = f": {error.server_message}" if error.server_message else ""
                    raise BackupError(f"Hub {what} in {self.repo_id} failed with HTTP {status}{tries}{reason}",
                                      status=status,
                                      not_found=status == 404 or isinstance(error, _NOT_FOUND)) from None
                delay = _retry_after(error)
                if delay is None:
                    delay = min(BACKOFF_BASE_S * 2 ** attempt, BACKOFF_CAP_S)
                attempt += 1
                log.warning("Hub %s: HTTP %d, retry %d/%d in %.0f s", what, status, attempt, self.max_retries, delay)
                self._sleep(delay)


@dataclass
class _Request:
    checkpoint: Path
    step: int
    extra: Callable[[], Extras]
    listeners: dict[StateCallback, list[int]]
    """Each distinct on_state callback -> the command ids it answers for (superseded ones too)."""


class BackupQueue:
    """Runs a HubBackup on a background thread so training never waits on the network.

    Requests arriving while one is waiting for its commit slot or uploading are coalesced:
    only the newest pending checkpoint is uploaded, and the callbacks and command ids of
    the superseded requests get its states. on_state(step, state, detail, command_ids)
    is called with "uploading", then "hub" (detail: the checkpoint's URL) or "error"
    (detail: the message); step is the uploaded step. A failed backup is reported and the
    thread goes on with the next request."""

    def __init__(self, hub: HubBackup) -> None:
        self.hub = hub
        self._cond = threading.Condition()
        self._pending: _Request | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"hub-backup-{hub.prefix}", daemon=True)
        self._thread.start()

    def request(self, checkpoint: Path, step: int, extra: Callable[[], Extras], on_state: StateCallback,
                command_id: int | None = None) -> None:
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
            self.hub.wait_for_commit_slot()
            with self._cond:
                request, self._pending = self._pending, None
            assert request is not None  # only this thread takes the pending request
            self._notify(request, request.step, "uploading", None)
            try:
                result = self.hub.backup(request.checkpoint, request.step, request.extra())
            except Exception as e:  # reported to the dashboard; training must go on
                message = redact(str(e) if isinstance(e, BackupError) else f"{type(e).__name__}: {e}")
                log.warning("backup of step %d failed: %s", request.step, message)
                self._notify(request, request.step, "error", message)
            else:
                self._notify(request, result.step, "hub", result.url)

    @staticmethod
    def _notify(request: _Request, step: int, state: str, detail: str | None) -> None:
        for on_state, command_ids in request.listeners.items():
            try:
                on_state(step, state, detail, list(command_ids))
            except Exception:  # a broken callback must not stop later backups
                log.exception("backup state callback failed for step %d (%s)", step, state)
