"""Writing a file so that a crash leaves the old file or the new one, never half of it:
checkpoints, the pairs' manifest, local datasets, and the worker's backup folder and
outbox all rely on it; and a file's digest, by which the worker's backups and the server's
checkpoint downloads each prove a copy is the checkpoint that was saved. No torch here."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path, sync: bool = True) -> Iterator[Path]:
    """A temporary path beside `path` to write to; when the block ends it is synced to disk
    (unless `sync` is False) and renamed over `path` in one step. On an error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in 1 MiB chunks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
