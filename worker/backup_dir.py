"""Checkpoint backup to, and restore from, a folder: Google Drive mounted in Colab
(`/content/drive/MyDrive/...`), or any local or network path that outlives the machine.

A folder has no commits, so every file is written to a temporary name beside it, synced
and renamed over (atomic on one filesystem), and the manifest is written last: a reader
that finds a checkpoint in the manifest finds it whole. Checkpoints retention drops are
deleted after the new manifest is in place. The manifest, retention and restore are
`worker.backup.BackupTarget`'s, shared with the Hub target.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from dlite.files import atomic_path
from worker.backup import BackupError, BackupTarget, Extras


def write_atomic(target: Path, content: bytes | Path) -> None:
    """Writes `content` (bytes, or a file to copy) over `target`, whole or not at all."""
    with atomic_path(target) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            shutil.copyfile(content, tmp)


class DirectoryBackup(BackupTarget):
    """Backs up one run's checkpoints under `<root>/runs/<run_key>/`."""

    def __init__(
        self,
        root: str | Path,
        run_key: str,
        keep_every: int = 5000,
        min_interval_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(run_key, keep_every, min_interval_s, sleep, clock)
        self.root = Path(root).expanduser()
        self.description = f"backup folder {self.root}"

    def url_of(self, path: str) -> str:
        return (self.root / path).absolute().as_uri()

    def _prepare(self) -> None:
        """Creates the folder itself but not the folders above it: when those are missing,
        Google Drive is most likely not mounted, and a backup written to the machine's own
        disk would vanish with it."""
        if self.root.is_dir():
            return
        if not self.root.parent.is_dir():
            raise BackupError(
                f"backup_dir {self.root}: the folder {self.root.parent} does not exist. In Colab, "
                f"mount Google Drive first (from google.colab import drive; "
                f"drive.mount('/content/drive')); elsewhere create it, or fix backup_dir"
            )
        try:
            self.root.mkdir(exist_ok=True)
        except OSError as e:
            raise BackupError(f"backup_dir {self.root} cannot be created ({e}); fix backup_dir") from None

    def _list_files(self) -> list[str]:
        run_dir = self.root / self.prefix
        return sorted(p.relative_to(self.root).as_posix() for p in run_dir.rglob("*") if p.is_file())

    def _commit(self, adds: Extras, deletes: list[str], what: str) -> None:
        try:
            for path, content in adds.items():  # the manifest comes last: it commits the backup
                write_atomic(self.root / path, content)
            for path in deletes:
                (self.root / path).unlink(missing_ok=True)
        except OSError as e:
            raise BackupError(
                f"backup of {what} to {self.description} failed ({e}); check that the "
                f"folder is writable and has space (in Colab: Google Drive still mounted)"
            ) from None

    def _download(self, path: str, dest: Path) -> Path | None:
        """Copies the file into `dest`; None when it is missing. A missing backup folder is
        an error, not "nothing backed up": resuming from scratch because Google Drive is
        not mounted would start the run again and lose its backups' worth of training."""
        if not self.root.is_dir():
            raise BackupError(
                f"backup folder {self.root} does not exist: mount Google Drive (in Colab) or "
                f"create it, or fix backup_dir"
            )
        source = self.root / path
        if not source.is_file():
            return None
        copy = dest / PurePosixPath(path).name
        try:
            shutil.copyfile(source, copy)
        except OSError as e:
            raise BackupError(f"reading {source} failed ({e}); check the {self.description}") from None
        return copy
