"""`dlite up`: server and worker processes started and stopped together."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.app_helpers import ROOT, free_port, subprocess_env, wait_for


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def start_up(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = subprocess_env(HF_TOKEN="hf_WorkerOnlySecret123", DLITE_DATASETS=str(tmp_path / "datasets"))
    env.pop("DLITE_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "dlite.cli", "up", "--port", str(port),
                             "--data-dir", str(tmp_path / "data"), *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200, 60, "dlite up")
    return proc, url


def test_up_prints_url_and_token_once_and_keeps_hf_token_from_server(tmp_path: Path) -> None:
    proc, url = start_up(tmp_path, "--demo")
    try:
        token = (tmp_path / "data" / "token").read_text().strip()
        assert oct((tmp_path / "data" / "token").stat().st_mode & 0o777) == "0o600"
        runs: list = []
        wait_for(lambda: runs.extend(httpx.get(f"{url}/api/runs", headers={"Authorization": f"Bearer {token}"})
                                     .json()) or runs, 30, "the demo run")
        assert len(runs) == 1 and runs[0]["is_demo"] is True
        kids = children(proc.pid)
        assert len(kids) == 2, "server and worker"
        by_role = {("app.server" in Path(f"/proc/{k}/cmdline").read_text()): k for k in kids}
        assert "HF_TOKEN" not in environ_of(by_role[True]), "the server never gets the HF token"
        assert environ_of(by_role[False])["HF_TOKEN"] == "hf_WorkerOnlySecret123"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=150)
    assert out.count(token) == 1 and f"{url}/" in out
    assert "hf_WorkerOnlySecret123" not in out
    assert all(not Path(f"/proc/{k}").exists() for k in kids), "Ctrl-C stops both"


@pytest.mark.slow
def test_demo_reaches_stage_2_on_cpu(tmp_path: Path) -> None:
    """The issue's promise: `dlite up --demo` records a score on a CPU in under 10 minutes."""
    started = time.monotonic()
    proc, url = start_up(tmp_path, "--demo", "--device", "cpu")
    try:
        token = (tmp_path / "data" / "token").read_text().strip()
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})
        wait_for(lambda: api.get("/api/runs/1").json()["status"] in ("succeeded", "failed"), 600, "the demo")
        run = api.get("/api/runs/1").json()
        assert run["status"] == "succeeded", run["error"]
        assert any(e["kind"] == "final" for e in run["evaluations"])
        assert time.monotonic() - started < 600
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=150)
