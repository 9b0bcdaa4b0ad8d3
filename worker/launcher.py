"""`dlite up`: the server and one local worker as two processes, stopped together.

Separate processes keep the server free of torch and let the worker be killed or
restarted (as Colab does) without taking the dashboard down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.settings import settings_from_env
from app.tunnel import open_tunnel


HF_TOKEN_VARS = {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}
"""The Hugging Face token belongs to the worker alone: the server process never gets it."""


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            raise SystemExit(f"dlite up: the server exited with code {server.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"dlite up: the server did not answer on {url} within {timeout:.0f} s")


def queue_demo(url: str, token: str) -> int:
    """Queue the no-download demo run; its settings live in dlite.demo."""
    from dlite.demo import DEMO_OVERRIDES, DEMO_TASK

    r = httpx.post(f"{url}/api/runs", headers={"Authorization": f"Bearer {token}"}, timeout=30,
                   json={"task": DEMO_TASK, "name": "demo (local gait data, tiny model)",
                         "config": DEMO_OVERRIDES, "is_demo": True})
    r.raise_for_status()
    return r.json()["id"]


def _stop(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()


def up(host: str, port: int, data_dir: str | None, worker: bool, demo: bool, device: str | None,
       tunnel: str | None = None) -> int:
    settings = settings_from_env(data_dir)
    env = {**os.environ, "DLITE_TOKEN": settings.token, "DLITE_DATA_DIR": str(settings.data_dir)}
    for name in HF_TOKEN_VARS:  # from here on only the worker's env has it: not the server, not tunnels
        os.environ.pop(name, None)
    server_env = {k: v for k, v in env.items() if k not in HF_TOKEN_VARS}
    server = subprocess.Popen([sys.executable, "-m", "app.server", "--host", host, "--port", str(port),
                               "--data-dir", str(settings.data_dir)], env=server_env)
    local = f"http://127.0.0.1:{port}"
    procs = [server]
    try:
        _wait_healthy(local, server)
        if tunnel:
            open_tunnel(tunnel, port, Path(settings.data_dir))
        if demo:
            print(f"queued demo run {queue_demo(local, settings.token)}", flush=True)
        if worker:
            cmd = [sys.executable, "-m", "dlite.cli", "worker", "--server", local,
                   "--work-dir", str(Path(settings.data_dir) / "worker"), "--name", "local"]
            procs.append(subprocess.Popen(cmd + (["--device", device] if device else []), env=env))
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return next(p.returncode for p in procs if p.poll() is not None) or 0
    except KeyboardInterrupt:
        print("\nstopping: the worker saves a checkpoint first", flush=True)
        return 0
    finally:
        for proc in reversed(procs):
            _stop(proc, grace=120 if proc is not server else 10)
