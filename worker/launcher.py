"""`dlite up`: the server and one local worker as two processes, stopped together.

Separate processes keep the server free of torch and let the worker be killed or
restarted (as Colab does) without taking the dashboard down: a worker that dies is
started again, with a growing pause when it keeps dying. SIGTERM (`docker stop`, a
process manager) stops both like Ctrl-C: the worker saves a checkpoint first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.settings import STATE_STATUS_FILE, data_dir_from_env, database_url_from_env, settings_from_env
from app.tunnel import open_tunnel
from worker.backup import BackupError, BackupTarget
from worker.state_backup import StateBackup, restore, state_target

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

    r = httpx.post(
        f"{url}/api/runs",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        json={
            "task": DEMO_TASK,
            "name": "demo (local gait data, tiny model)",
            "config": DEMO_OVERRIDES,
            "is_demo": True,
        },
    )
    r.raise_for_status()
    return r.json()["id"]


STATE_EVERY_MINUTES = 2.0
"""How often the server state is saved to a folder (when it changed): what a disconnect can lose of it."""
HUB_STATE_EVERY_MINUTES = 5.0
"""The same on the Hub, where every save is a commit whose snapshot stays in the repo's history."""
RESTART_PAUSES_S = (1, 2, 5, 10, 30, 60)
"""Pause before restarting a worker that died, by how many times in a row it died young."""
WORKER_SETTLED_S = 60.0
"""A worker that ran this long before dying counts as a fresh failure, not a crash loop."""


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


class LocalWorker:
    """The local worker process, started again (after a pause) whenever it exits."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.cmd, self.env = cmd, env
        self.failures = 0
        self.restart_at: float | None = None
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        self.started = time.monotonic()
        return subprocess.Popen(self.cmd, env=self.env)

    def watch(self) -> None:
        """Notice an exit and schedule the restart; restart when its pause is over."""
        now = time.monotonic()
        if self.restart_at is None and self.proc.poll() is not None:
            self.failures = 1 if now - self.started >= WORKER_SETTLED_S else self.failures + 1
            pause = RESTART_PAUSES_S[min(self.failures, len(RESTART_PAUSES_S)) - 1]
            print(
                f"dlite up: the local worker exited with code {self.proc.returncode}; the dashboard stays up, "
                f"restarting the worker in {pause} s (its run resumes from the newest checkpoint)",
                flush=True,
            )
            self.restart_at = now + pause
        elif self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self.proc = self._start()


def _stop(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()


def _restore_state(target: BackupTarget, data_dir: Path) -> str:
    """The saved server state goes in place before the server (and the token) exist; a
    storage that cannot be read stops the start: a new empty lab would later replace the
    good backup with itself. Returns the lab's id."""
    if os.environ.get("DATABASE_URL", database_url_from_env(data_dir)) != database_url_from_env(data_dir):
        raise SystemExit(
            "dlite up: --backup-dir/--hub-repo save the embedded SQLite database in the data directory; "
            "with DATABASE_URL back the database up with its own tools (pg_dump) and leave these "
            "flags out"
        )
    try:
        restored = restore(target, data_dir, use_saved_token=not os.environ.get("DLITE_TOKEN"))
    except BackupError as e:
        raise SystemExit(f"dlite up: the saved server state cannot be restored: {e}") from None
    except Exception as e:  # no network at all, a storage library's own error: say so, start nothing
        raise SystemExit(
            f"dlite up: the saved server state cannot be read from {target.where()}: {type(e).__name__}: {e}"
        ) from None
    print(f"dlite up: {restored.message}", flush=True)
    return restored.lab_id


def up(
    host: str,
    port: int,
    data_dir: str | None,
    worker: bool,
    demo: bool,
    device: str | None,
    tunnel: str | None = None,
    backup_dir: str | None = None,
    hub_repo: str | None = None,
    state_every_minutes: float | None = None,
) -> int:
    hf_token = next((os.environ[n] for n in sorted(HF_TOKEN_VARS) if os.environ.get(n)), None)
    state_storage = state_target(backup_dir, hub_repo, hf_token)
    lab_id = _restore_state(state_storage, data_dir_from_env(data_dir)) if state_storage else ""
    settings = settings_from_env(data_dir)
    (settings.data_dir / STATE_STATUS_FILE).unlink(missing_ok=True)  # an earlier launch's word is not this one's
    env = {**os.environ, "DLITE_TOKEN": settings.token, "DLITE_DATA_DIR": str(settings.data_dir)}
    for name in HF_TOKEN_VARS:  # from here on only the worker's env has it: not the server, not tunnels
        os.environ.pop(name, None)
    server_env = {k: v for k, v in env.items() if k not in HF_TOKEN_VARS}
    if settings.token_file is not None:  # the server reads the same file, and says so when it starts
        server_env.pop("DLITE_TOKEN")
    signal.signal(signal.SIGTERM, _interrupt)  # `docker stop` and process managers: same as Ctrl-C
    server = subprocess.Popen(
        [sys.executable, "-m", "app.server", "--host", host, "--port", str(port), "--data-dir", str(settings.data_dir)],
        env=server_env,
    )
    local = f"http://127.0.0.1:{port}"
    local_worker: LocalWorker | None = None
    every = state_every_minutes or (HUB_STATE_EVERY_MINUTES if hub_repo else STATE_EVERY_MINUTES)
    state = state_storage and StateBackup(
        state_storage,
        settings.data_dir,
        lab_id,
        every_s=every * 60,
        token=None if settings.token_file is None else settings.token,
    )
    try:
        _wait_healthy(local, server)
        if state:
            state.start()
        if tunnel:
            open_tunnel(tunnel, port, Path(settings.data_dir))
        if demo:
            print(f"queued demo run {queue_demo(local, settings.token)}", flush=True)
        if worker:
            cmd = [
                sys.executable,
                "-m",
                "worker.cli",
                "worker",
                "--server",
                local,
                "--work-dir",
                str(Path(settings.data_dir) / "worker"),
                "--name",
                "local",
            ]
            local_worker = LocalWorker(cmd + (["--device", device] if device else []), env)
        while server.poll() is None:
            if local_worker:
                local_worker.watch()
            if state and state.superseded.is_set():
                print(
                    "dlite up: another machine started this lab from the same storage; stopping this one so "
                    "that the two do not overwrite each other's state and backups",
                    flush=True,
                )
                return 1
            time.sleep(0.5)
        print(f"dlite up: the server exited with code {server.returncode}; stopping", flush=True)
        return server.returncode or 1
    except KeyboardInterrupt:
        print("\nstopping: the worker saves a checkpoint first", flush=True)
        return 0
    finally:
        if local_worker:
            _stop(local_worker.proc, grace=120)
        _stop(server, grace=10)
        if state:  # also when stopped before it was seen healthy: a browser may have been quicker
            print("dlite up: saving the server state ...", flush=True)
            print(f"dlite up: server state {state.close()}", flush=True)
