"""Checkpoint backup to, and restore from, a private Hugging Face Hub model repo.

A free Colab GPU can vanish at any moment, so every backup is ONE Hub commit that
holds the checkpoint, the updated manifest, the caller's extras and the deletions of
checkpoints no longer retained: the remote repo is never half-updated. The manifest,
retention and restore are `worker.backup.BackupTarget`'s; this module adds the Hub's
calls and their retries.

The Hub token lives only in this process: `HfApi()` reads it from HF_TOKEN or the
local login by itself. This module never reads, logs or returns it, and the messages
it builds from Hub responses are passed through `redact` in case a server echoes one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from worker.backup import BackupError, BackupTarget, Extras

log = logging.getLogger(__name__)

HUB_URL = "https://huggingface.co"
REPO_TYPE = "model"
BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 300.0

_NOT_FOUND = (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
T = TypeVar("T")


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


class HubBackup(BackupTarget):
    """Backs up one run's checkpoints to `repo_id` under `runs/<run_key>/`, one commit per backup."""

    description = "Hugging Face Hub"

    def __init__(
        self,
        repo_id: str,
        run_key: str,
        api: HfApi | None = None,
        keep_every: int = 5000,
        min_interval_s: float = 60.0,
        max_retries: int = 6,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(run_key, keep_every, min_interval_s, sleep, clock)
        self.repo_id = repo_id
        self.api = api if api is not None else HfApi()
        self.max_retries = max_retries

    def url_of(self, path: str) -> str:
        return f"{HUB_URL}/{self.repo_id}/blob/main/{path}"

    def where(self) -> str:
        if os.environ.get("HF_TOKEN") or self.api.token:
            token = "HF_TOKEN is set"
        else:
            token = "HF_TOKEN is not set" + (
                "; a saved `hf auth login` token is used" if get_token() else " and there is no saved login"
            )
        return f"the Hugging Face Hub at {self.api.endpoint}, repo {self.repo_id} ({token})"

    def _prepare(self) -> None:
        """Creates the private repo if missing; harmless when it exists."""
        self._call(
            "create repo", lambda: self.api.create_repo(self.repo_id, private=True, exist_ok=True, repo_type=REPO_TYPE)
        )

    def _list_files(self) -> list[str]:
        return self._call("list repo files", lambda: self.api.list_repo_files(self.repo_id, repo_type=REPO_TYPE))

    def _commit(self, adds: Extras, deletes: list[str], what: str) -> None:
        def operations() -> list[CommitOperationAdd | CommitOperationDelete]:
            # Built afresh for every attempt: create_commit mutates its operations.
            ops: list[CommitOperationAdd | CommitOperationDelete] = [
                CommitOperationAdd(path_in_repo=p, path_or_fileobj=c if isinstance(c, bytes) else str(c))
                for p, c in adds.items()
            ]
            return ops + [CommitOperationDelete(path_in_repo=p) for p in deletes]

        self._call(
            f"commit of {what}",
            lambda: self.api.create_commit(self.repo_id, operations(), commit_message=what, repo_type=REPO_TYPE),
        )

    def private(self) -> bool:
        """A public repo (made by hand before the lab saw it) must never receive a secret."""
        return bool(self._call("repo info", lambda: self.api.repo_info(self.repo_id, repo_type=REPO_TYPE)).private)

    def _download(self, path: str, dest: Path) -> Path | None:
        """hf_hub_download into `dest`; None when the repo or the file does not exist."""
        try:
            return Path(
                self._call(
                    f"download of {path}",
                    lambda: self.api.hf_hub_download(self.repo_id, path, repo_type=REPO_TYPE, local_dir=dest),
                )
            )
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
                    raise BackupError(
                        f"Hub {what} in {self.repo_id} failed with HTTP {status}{tries}{reason}",
                        status=status,
                        not_found=status == 404 or isinstance(error, _NOT_FOUND),
                    ) from None
                delay = _retry_after(error)
                if delay is None:
                    delay = min(BACKOFF_BASE_S * 2**attempt, BACKOFF_CAP_S)
                attempt += 1
                log.warning("Hub %s: HTTP %d, retry %d/%d in %.0f s", what, status, attempt, self.max_retries, delay)
                self._sleep(delay)
