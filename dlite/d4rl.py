"""Finding and reading D4RL MuJoCo HDF5 files, without the `d4rl` package.

`d4rl` needs mujoco-py; the files themselves are plain HDF5, so we read them with
h5py and fetch them from the official URL once into a cache.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from dlite.tasks import TASKS, get_task

KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")

ProgressFn = Callable[[int, int | None], None]
"""Called with (bytes done, total bytes or None) while downloading."""


class DatasetError(RuntimeError):
    """A dataset that cannot be found, fetched or read; the message says what to do."""


@dataclass
class RawDataset:
    """The five D4RL arrays, flat over all transitions, plus where they came from."""

    path: Path
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray

    def fingerprint(self) -> str:
        """sha256 of the arrays, so a checkpoint can refuse to resume on other data."""
        h = hashlib.sha256()
        for key in KEYS:
            a = np.ascontiguousarray(getattr(self, key))
            h.update(f"{key}{a.shape}{a.dtype}".encode())
            h.update(a.tobytes())
        return h.hexdigest()


def cache_dir() -> Path:
    """Where downloads go: $DLITE_DATASETS, else ~/.cache/dlite/d4rl."""
    return Path(os.environ.get("DLITE_DATASETS", Path.home() / ".cache" / "dlite" / "d4rl"))


def resolve(task_or_path: str, progress: ProgressFn | None = None) -> Path:
    """A local HDF5 path for a task name or a path; downloads a task once, atomically."""
    if task_or_path not in TASKS:
        path = Path(task_or_path).expanduser()
        if path.suffix in (".hdf5", ".h5") or path.exists() or os.sep in task_or_path:
            if not path.is_file():
                raise DatasetError(f"dataset file {path} does not exist")
            return path
    task = get_task(task_or_path)
    for folder in (cache_dir(), Path.home() / ".d4rl" / "datasets"):
        if (folder / task.file_name).is_file():
            return folder / task.file_name
    target = cache_dir() / task.file_name
    download(task.url, target, progress)
    return target


def download(url: str, target: Path, progress: ProgressFn | None = None) -> None:
    """Fetch url into target through a partial file, renamed only when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if total is not None and done != total:
            raise DatasetError(f"download of {url} stopped at {done} of {total} bytes")
    except (urllib.error.URLError, OSError, DatasetError) as e:
        partial.unlink(missing_ok=True)
        raise DatasetError(
            f"could not download {url}: {e}. Download it by hand and either put it at "
            f"{target} or pass its path as --dataset"
        ) from None
    os.replace(partial, target)


def load(path: Path) -> RawDataset:
    """Read and check the five arrays; every failure names the file and the problem."""
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in KEYS if k not in f]
            if missing:
                raise DatasetError(
                    f"{path}: missing dataset key(s) {', '.join(missing)}; a D4RL file holds {', '.join(KEYS)}"
                )
            arrays = {k: f[k][()] for k in KEYS}
    except OSError as e:
        raise DatasetError(
            f"{path}: cannot be read as HDF5 ({e}); the file may be truncated "
            f"or corrupt: delete it and download it again"
        ) from None
    n = len(arrays["observations"])
    if arrays["observations"].ndim != 2 or arrays["actions"].ndim != 2:
        raise DatasetError(f"{path}: observations and actions must be 2-d arrays")
    for key in KEYS[1:]:
        if len(arrays[key]) != n:
            raise DatasetError(f"{path}: {key} has {len(arrays[key])} rows, observations {n}")
    if n == 0:
        raise DatasetError(f"{path}: the dataset is empty")
    for key in ("observations", "actions", "rewards"):
        if not np.isfinite(arrays[key]).all():
            raise DatasetError(f"{path}: {key} holds NaN or infinite values")
    return RawDataset(
        path=path,
        observations=arrays["observations"].astype(np.float32),
        actions=arrays["actions"].astype(np.float32),
        rewards=arrays["rewards"].astype(np.float32).reshape(-1),
        terminals=arrays["terminals"].astype(bool).reshape(-1),
        timeouts=arrays["timeouts"].astype(bool).reshape(-1),
    )
