"""Checkpoint downloads from the run page. The server holds no checkpoint of its own: a
Hub copy is downloaded from the Hub (the user's own repository), and the worker's own file
or its backup-folder copy is served by the server when it can read it (the worker on the
same machine, as `dlite up` and Colab run it). A file is served only under its checkpoint's
name and with the size and sha256 the worker recorded when it saved it, so a `file://` URL
can point at nothing else and a changed or half-written file is never handed out."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from app.models import Checkpoint
from dlite.checkpoint_names import checkpoint_name
from dlite.files import file_sha256


def _file_of(url: str | None, step: int) -> Path | None:
    if not url or not url.startswith("file:///"):
        return None
    path = Path(unquote(urlparse(url).path))
    return path if path.name == checkpoint_name(step) else None


def copies(c: Checkpoint) -> list[Path]:
    """The paths of `c` on this machine that exist: the worker's file (unless keep_local
    pruned it), then the backup folder's."""
    urls = ([] if c.pruned else [c.local_url]) + ([c.hub_url] if c.backup_state == "hub" else [])
    return [p for p in (_file_of(u, c.step) for u in urls) if p is not None and p.is_file()]


def readable_copy(c: Checkpoint) -> Path | None:
    """A copy of `c` on this machine that is still the checkpoint that was saved (size,
    sha256); None when there is none."""
    for path in copies(c):
        if path.stat().st_size == c.size and file_sha256(path) == (c.sha256, c.size):
            return path
    return None


def download_where(c: Checkpoint) -> str:
    """Where a checkpoint can be downloaded from, for the run page: 'server' (a copy is on
    this machine), 'hub', or 'worker' (only the worker's disk has it)."""
    if copies(c):
        return "server"
    if c.backup_state == "hub" and c.hub_url and c.hub_url.startswith("https://"):
        return "hub"
    return "worker"
