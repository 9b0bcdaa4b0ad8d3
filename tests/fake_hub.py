"""An in-memory fake of the HfApi client object, shared by the Hub tests.

It implements only the HfApi methods worker.hub calls, with the real keyword names
(checked against the installed huggingface_hub in test_worker_hub.py), and fails the
way the real client does: errors come out of huggingface_hub's own `hf_raise_for_status`
on an httpx response, so the retry code reads status and Retry-After as in production.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import NoReturn, cast

import httpx2
from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, ModelInfo, RepoUrl
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.utils import hf_raise_for_status


def _raise(status: int, method: str, url: str, headers: dict[str, str] | None = None) -> NoReturn:
    """Raises exactly what huggingface_hub raises for this response; the request carries the
    token in its Authorization header, as a real one does, so a leak would show."""
    request = httpx2.Request(method, url, headers={"authorization": f"Bearer {os.environ['HF_TOKEN']}"})
    hf_raise_for_status(httpx2.Response(status, headers=headers or {}, request=request))
    raise AssertionError(f"status {status} did not raise")


class FakeHubApi:
    """An in-memory Hub holding model repos; `fail[method]` queues (status, headers) failures."""

    endpoint = "https://huggingface.co"
    token: str | None = None
    """As on HfApi: the token it was made with (None: HF_TOKEN or the saved login)."""

    def __init__(self, clock: FakeTime | None = None) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.private: dict[str, bool] = {}
        self.commits: list[dict] = []
        self.fail: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.corrupt: set[str] = set()
        self.calls: list[str] = []
        self.clock = clock
        self.commit_gate: threading.Event | None = None
        self.commit_entered = threading.Event()

    def as_hf_api(self) -> HfApi:
        """This fake where an HfApi is expected (HubBackup's `api`): it is not one, but it has
        every method worker.hub calls, with the same keywords."""
        return cast(HfApi, self)

    def _maybe_fail(self, name: str, method: str, url: str) -> None:
        self.calls.append(name)
        queued = self.fail.get(name)
        if queued:
            status, headers = queued.pop(0)
            _raise(status, method, url, headers)

    def _files(self, repo_id: str, method: str, url: str) -> dict[str, bytes]:
        if repo_id not in self.repos:
            _raise(404, method, url, {"X-Error-Code": "RepoNotFound"})
        return self.repos[repo_id]

    def create_repo(
        self,
        repo_id: str,
        *,
        token: str | bool | None = None,
        private: bool | None = None,
        repo_type: str | None = None,
        exist_ok: bool = False,
    ) -> RepoUrl:
        self._maybe_fail("create_repo", "POST", "https://huggingface.co/api/repos/create")
        assert repo_type in (None, "model")
        if repo_id in self.repos and not exist_ok:
            _raise(409, "POST", "https://huggingface.co/api/repos/create")
        self.repos.setdefault(repo_id, {".gitattributes": b"*.pt filter=lfs\n"})
        self.private.setdefault(repo_id, bool(private))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(
        self,
        repo_id: str,
        operations,
        *,
        commit_message: str,
        token: str | bool | None = None,
        repo_type: str | None = None,
        revision: str | None = None,
    ) -> CommitInfo:
        url = f"https://huggingface.co/api/models/{repo_id}/commit/main"
        if self.commit_gate is not None:
            self.commit_entered.set()
            self.commit_gate.wait(5)
        self._maybe_fail("create_commit", "POST", url)
        files = self._files(repo_id, "POST", url)
        staged = dict(files)
        added, deleted = [], []
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                with op.as_file() as f:
                    staged[op.path_in_repo] = f.read()
                added.append(op.path_in_repo)
            elif isinstance(op, CommitOperationDelete):
                if op.path_in_repo not in staged:
                    _raise(404, "POST", url, {"X-Error-Code": "EntryNotFound"})
                del staged[op.path_in_repo]
                deleted.append(op.path_in_repo)
            else:
                raise TypeError(op)
        files.clear()
        files.update(staged)
        self.commits.append(
            {
                "time": self.clock.now if self.clock else None,
                "message": commit_message,
                "added": added,
                "deleted": deleted,
            }
        )
        oid = f"{len(self.commits):040x}"
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}",
            commit_message=commit_message,
            commit_description="",
            oid=oid,
        )

    def list_repo_files(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        repo_type: str | None = None,
        token: str | bool | None = None,
    ) -> list[str]:
        url = f"https://huggingface.co/api/models/{repo_id}/tree/main"
        self._maybe_fail("list_repo_files", "GET", url)
        return sorted(self._files(repo_id, "GET", url))

    def hf_hub_download(
        self,
        repo_id: str,
        filename: str,
        *,
        subfolder: str | None = None,
        repo_type: str | None = None,
        revision: str | None = None,
        local_dir: str | Path | None = None,
        token: bool | str | None = None,
    ) -> str:
        url = f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
        try:
            self._maybe_fail("hf_hub_download", "HEAD", url)
        except HfHubHTTPError as e:
            if e.response.status_code in (401, 404):
                raise
            # The real hf_hub_download turns a failed metadata call into this, raised *from* the HTTP error.
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub") from e
        data = self._files(repo_id, "HEAD", url).get(filename)
        if data is None:
            _raise(404, "HEAD", url, {"X-Error-Code": "EntryNotFound"})
        if filename in self.corrupt:
            data = bytes(b ^ 0xFF for b in data)
        assert local_dir is not None, "worker.hub always downloads into a local_dir"
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return str(target)

    def repo_info(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        repo_type: str | None = None,
        token: bool | str | None = None,
    ) -> ModelInfo:
        url = f"https://huggingface.co/api/models/{repo_id}"
        self._maybe_fail("repo_info", "GET", url)
        self._files(repo_id, "GET", url)
        return ModelInfo(id=repo_id, private=self.private[repo_id])


class FakeTime:
    """Monotonic clock that only moves when the code sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
