"""System metrics of the worker's machine while it works on a run: CPU, RAM and disk (psutil),
GPU utilisation (NVML, through nvidia-ml-py) and the GPU memory torch holds.

Samples are read on a thread of their own every `interval_s` and go through the run's
outbox like any metric point, so training never waits for them and a crash or a server
outage loses none. Their `step` is the sample's Unix second (app.protocol.SYSTEM_PREFIX):
a replay writes the same points again, and no two samples share a step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from app.protocol import SYSTEM_PREFIX

log = logging.getLogger(__name__)
GIB = 2**30
INTERVAL_ENV = "DLITE_SYSTEM_METRICS_SECONDS"
DEFAULT_INTERVAL_S = 15.0
"""Often enough to see memory creep and stalls on a run of hours, rare enough to cost nothing."""
GPU_KEYS = tuple(SYSTEM_PREFIX + k for k in ("gpu_util_percent", "gpu_mem_allocated_gib", "gpu_mem_reserved_gib"))


@dataclass(frozen=True)
class Sample:
    wall_time: float
    values: dict[str, float]
    """What was measured, by metric key."""
    missing: dict[str, str]
    """Keys this machine cannot measure, with why: never sent as zeros."""


def interval_s() -> float:
    """The sampling interval: $DLITE_SYSTEM_METRICS_SECONDS, at least 1 s (a sample's step is
    its Unix second), else the default."""
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        return max(float(raw), 1.0) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds; sampling every %.0f s", INTERVAL_ENV, raw, DEFAULT_INTERVAL_S)
        return DEFAULT_INTERVAL_S


class Sampler:
    """Reads one sample. Opening NVML can fail on a GPU machine (no driver library, a
    container without it): the GPU's utilisation is then missing, torch's memory is not.
    NVML can also fail later (a GPU fallen off the bus): from then on the utilisation is
    missing too, with why, and the other measurements go on."""

    def __init__(self, device: str, disk_path: Path) -> None:
        self.disk_path = disk_path
        self.cuda: int | None = (torch.device(device).index or 0) if device.startswith("cuda") else None
        self.missing: dict[str, str] = {}
        self._nvml = None
        if self.cuda is None:
            self.missing = {k: f"none: the run uses {device}, no CUDA GPU" for k in GPU_KEYS}
        else:
            self._nvml = self._open_nvml()
        psutil.cpu_percent(None)  # starts the interval the next call measures (this one says 0.0)

    def _open_nvml(self) -> object | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            uuid = torch.cuda.get_device_properties(self.cuda).uuid  # NVML ignores CUDA_VISIBLE_DEVICES
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except Exception as e:  # pynvml.NVMLError, or no nvidia-ml-py
            self.missing = {SYSTEM_PREFIX + "gpu_util_percent": f"none: NVML unavailable ({type(e).__name__}: {e})"}
            return None

    def sample(self) -> Sample:
        memory = psutil.virtual_memory()
        values = {
            SYSTEM_PREFIX + "cpu_percent": psutil.cpu_percent(None),
            SYSTEM_PREFIX + "ram_used_gib": (memory.total - memory.available) / GIB,
            SYSTEM_PREFIX + "disk_used_gib": psutil.disk_usage(str(self.disk_path)).used / GIB,
        }
        if self.cuda is not None:
            values[SYSTEM_PREFIX + "gpu_mem_allocated_gib"] = torch.cuda.memory_allocated(self.cuda) / GIB
            values[SYSTEM_PREFIX + "gpu_mem_reserved_gib"] = torch.cuda.memory_reserved(self.cuda) / GIB
        if self._nvml is not None:
            import pynvml

            try:
                values[SYSTEM_PREFIX + "gpu_util_percent"] = float(pynvml.nvmlDeviceGetUtilizationRates(self._nvml).gpu)
            except pynvml.NVMLError as e:
                # raised out of here, it would cost every sample from now on its CPU, RAM and GPU memory too;
                # the error is lasting (a lost GPU, a reset driver), so NVML is not asked again
                why = f"none: NVML failed ({type(e).__name__}: {e})"
                log.warning("system metrics: GPU utilisation is no longer sampled: %s", why)
                self._nvml = None
                self.missing = {**self.missing, SYSTEM_PREFIX + "gpu_util_percent": why}
        return Sample(time.time(), values, dict(self.missing))


Send = Callable[[int, dict[str, float], float], None]
"""Where samples go: the run's `Outbox.metrics(step, values, wall_time)`."""


class SystemMonitor:
    """Samples every `interval` seconds on a daemon thread until `stop`, which takes a last
    sample so that a run shorter than the interval has one too. A failing sample is logged
    and skipped: system metrics never stop a run."""

    def __init__(self, sampler: Sampler, send: Send, interval: float) -> None:
        self.sampler, self.send, self.interval = sampler, send, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def _take(self) -> None:
        try:
            sample = self.sampler.sample()
            self.send(int(sample.wall_time), sample.values, sample.wall_time)
        except Exception:
            log.warning("system metrics: a sample failed; the next one is tried", exc_info=True)

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(5.0)
        self._take()
