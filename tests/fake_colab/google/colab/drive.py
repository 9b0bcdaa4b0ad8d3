"""Colab's Google Drive: `mount` asks the user for access. Here the user never grants it,
so nothing appears at the mount point, as when the prompt is dismissed."""

from __future__ import annotations


def mount(mountpoint: str, force_remount: bool = False, timeout_ms: int = 120000, readonly: bool = False) -> None:
    print(f"(fake Colab: Drive access not granted, nothing mounted at {mountpoint})")
