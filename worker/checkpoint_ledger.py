"""What the server should know of one training stage's checkpoints, and the backups of them.

R1 and R2's reflow keep their checkpoints in folders of their own and back them up to
storage folders of their own, so a resume never mixes the two; each stage gets its own
ledger, and a ledger only ever reports the checkpoints of its stage. Every report goes
through the run's outbox, so the server sees them in the order they were made."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlite import checkpoint
from dlite.files import file_sha256
from worker.backup import BackupQueue, BackupTarget, Extras
from worker.client import ServerUnavailable

log = logging.getLogger(__name__)

Post = Callable[[str, dict[str, Any]], None]
"""Queues one write to the server: the run's `Outbox.post`."""
Event = Callable[[str, str], None]
"""Reports a run event (message, level)."""


class CheckpointLedger:
    """One stage's checkpoint folder, its backup target and queue, and what has been reported
    of each checkpoint: its hash (a backup state update repeats it, and a pruning needs it
    after the file is gone) and whether its pruning was reported.

    `after` < step <= `upto` (None: no end) is the stage's range of steps: the server's list
    holds both stages' checkpoints (R2's steps continue R1's), and a resume must reconcile
    only its own with its folder."""

    def __init__(
        self,
        folder: Path,
        target: BackupTarget | None,
        *,
        after: int,
        upto: int | None,
        post: Post,
        event: Event,
        listed: Callable[[], list[dict[str, Any]]],
        extras: Callable[[], Extras],
        label: str,
        unreachable: Callable[[], bool] = lambda: False,
    ) -> None:
        """`listed` fetches the server's checkpoint list, `extras` the files a backup carries
        beside the weights (read just before the upload, so they are as fresh as it); `label`
        names the run in log lines; `unreachable` tells the queue whether failed backups are
        expected (BackupQueue.in_use)."""
        self.folder, self.target = folder, target
        self.after, self.upto = after, upto
        self._post, self._event, self._listed, self._extras, self._label = post, event, listed, extras, label
        self.backups = BackupQueue(target, unreachable) if target else None
        self.hashes: dict[int, tuple[str, int]] = {}
        self.pruned: set[int] = set()

    @property
    def backs_up(self) -> bool:
        return self.backups is not None

    def saved(self, step: int, path: Path) -> None:
        """Hash a new checkpoint once; backup state updates reuse it."""
        sha256, size = file_sha256(path)
        self.hashes[step] = (sha256, size)
        self._post(
            "checkpoints",
            {
                "step": step,
                "size": size,
                "sha256": sha256,
                "backup_state": "local",
                "pruned": False,
                "local_url": path.absolute().as_uri(),
            },
        )
        self._report_pruned()

    def _report_pruned(self) -> None:
        """Checkpoints this attempt reported that keep_local has since deleted from disk."""
        present = {checkpoint.step_of(p) for p in checkpoint.list_checkpoints(self.folder)}
        for step in sorted(set(self.hashes) - present - self.pruned):
            sha256, size = self.hashes[step]
            self._post("checkpoints", {"step": step, "size": size, "sha256": sha256, "pruned": True})
            self.pruned.add(step)

    def reconcile(self) -> None:
        """Make the server's checkpoint list match this disk on resume: a checkpoint saved
        after the previous attempt was fenced off (its report was refused) is reported now,
        and listed ones no longer on disk are marked pruned."""
        try:
            listed = {c["step"]: c for c in self._listed() if self._owns(c["step"])}
        except ServerUnavailable as e:
            log.warning("%s: checkpoint list not reconciled, the server is unavailable: %s", self._label, e)
            return
        on_disk = {checkpoint.step_of(p): p for p in checkpoint.list_checkpoints(self.folder)}
        for step, path in sorted(on_disk.items()):
            assert step is not None  # list_checkpoints lists only files named by their step
            if step in listed and not listed[step]["pruned"]:
                self.hashes[step] = (listed[step]["sha256"], listed[step]["size"])  # so its pruning is reported
            else:
                self.saved(step, path)
        for step, c in sorted(listed.items()):
            if step not in on_disk and not c["pruned"]:
                self._post("checkpoints", {"step": step, "size": c["size"], "sha256": c["sha256"], "pruned": True})

    def _owns(self, step: int) -> bool:
        return self.after < step and (self.upto is None or step <= self.upto)

    def back_up_newest(self, command_id: int | None) -> bool:
        """Queue a backup of the newest checkpoint on disk; False, answering the dashboard's
        command if there is one, when there is no target or no checkpoint yet."""
        newest = checkpoint.list_checkpoints(self.folder)
        if self.backups is None or not newest:
            reason = (
                "no backup target configured (set hub_repo or backup_dir)"
                if self.backups is None
                else "no checkpoint yet"
            )
            if command_id is not None:
                self._post(f"commands/{command_id}", {"state": "error", "detail": reason})
            return False
        path = newest[-1]
        step = checkpoint.step_of(path)
        assert step is not None  # list_checkpoints lists only files named by their step
        if step not in self.hashes:  # saved by an earlier attempt
            self.hashes[step] = file_sha256(path)
        self.backups.request(path, step, self._extras, self._on_backup_state, command_id)
        return True

    def _on_backup_state(self, step: int, state: str, detail: str | None, command_ids: list[int]) -> None:
        if step in self.hashes:
            sha256, size = self.hashes[step]
            self._post(
                "checkpoints",
                {
                    "step": step,
                    "size": size,
                    "sha256": sha256,
                    "backup_state": state,
                    "hub_url": detail if state == "hub" else None,
                    "error": detail if state == "error" else None,
                },
            )
        command_state = {"uploading": "uploading", "hub": "done", "error": "error"}[state]
        for command_id in command_ids:
            self._post(f"commands/{command_id}", {"state": command_state, "detail": detail})
        if state == "error":
            self._event(f"backup of step {step} failed: {detail}; training goes on", "warning")

    def in_use(self) -> set[Path]:
        """Checkpoints a backup has queued or is reading, or failed to store (keep_local waits
        for them, see BackupQueue.in_use): with the server down, a backup waits up to a minute
        for the metrics while training saves on."""
        return self.backups.in_use() if self.backups else set()

    def close(self, timeout: float) -> bool:
        """Let the pending upload finish, so its state updates reach the server; False when
        it is still running after `timeout`."""
        return self.backups.close(timeout=timeout) if self.backups else True
