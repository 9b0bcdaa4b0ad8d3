"""The run page's system panel: the worker's CPU, RAM, disk and GPU samples
(worker/system_metrics.py), stored as metric points under `app.protocol.SYSTEM_PREFIX`.

They are drawn against wall time on charts of their own: their `step` is the sample's Unix
second, which the training charts' step axis must never see.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from app.protocol import SYSTEM_PREFIX
from app.services.metrics import chart_series

SYSTEM_CHARTS: tuple[dict[str, Any], ...] = tuple(
    {
        "id": f"system-{name}",
        "title": title,
        "unit": unit,
        "gpu": name.startswith("gpu"),
        "keys": tuple(SYSTEM_PREFIX + key for key in keys),
    }
    for name, title, unit, keys in (
        ("cpu", "CPU use", "%", ("cpu_percent",)),
        ("ram", "RAM used", "GiB", ("ram_used_gib",)),
        ("disk", "Disk used (work folder's disk)", "GiB", ("disk_used_gib",)),
        ("gpu-util", "GPU utilisation", "%", ("gpu_util_percent",)),
        ("gpu-memory", "GPU memory (torch)", "GiB", ("gpu_mem_allocated_gib", "gpu_mem_reserved_gib")),
    )
)
"""Each chart's y unit, and whether it is a GPU one: those say "none" on a worker without GPU."""


def system_series(session: Session, run_id: int, max_points: int) -> dict[str, dict[str, Any]]:
    """The system series the run has, each downsampled to at most `max_points`."""
    out = {}
    for key in (k for chart in SYSTEM_CHARTS for k in chart["keys"]):
        s = chart_series(session, run_id, key, max_points)
        if s["total"]:
            out[key] = s
    return out
