"""System metrics and the console (issue 22): the sampler on this CPU machine, system points
through the outbox without duplicates on replay, console lines bounded, redacted and folded,
stored once, behind the token and deleted with their run."""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from fastapi.testclient import TestClient

from app.protocol import CONSOLE_TEXT, SYSTEM_KEYS, SYSTEM_PREFIX
from app.services import console
from app.services.system_metrics import SYSTEM_CHARTS
from tests.app_helpers import LiveServer, app_of, claim_run, create_run, register
from worker.client import ServerClient
from worker.console import ConsoleCapture
from worker.outbox import Outbox
from worker.system_metrics import GIB, GPU_KEYS, Sample, Sampler, SystemMonitor

TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"[:34]


def test_the_sampler_on_this_cpu_machine_measures_cpu_ram_disk_and_says_there_is_no_gpu(tmp_path: Path) -> None:
    sampler = Sampler("cpu", tmp_path)
    started = time.perf_counter()
    sample = sampler.sample()
    assert time.perf_counter() - started < 0.05, "a sample must cost next to nothing"
    assert set(sample.values) == {SYSTEM_PREFIX + k for k in ("cpu_percent", "ram_used_gib", "disk_used_gib")}
    assert 0 <= sample.values["system/cpu_percent"] <= 100
    assert sample.values["system/ram_used_gib"] > 0 and sample.values["system/disk_used_gib"] > 0
    assert set(sample.missing) == set(GPU_KEYS), "no zeros pretending to be GPU measurements"
    assert all(why.startswith("none: the run uses cpu") for why in sample.missing.values())
    assert set(SYSTEM_KEYS) == set(sample.values) | set(sample.missing)
    assert {k for chart in SYSTEM_CHARTS for k in chart["keys"]} == set(SYSTEM_KEYS), "the page charts every key"


class _FakeGpu:
    """nvidia-ml-py and torch.cuda as a two-GPU machine shows them to the sampler: torch holds
    0.5 of 1 GiB reserved on device 0 and 1.5 of 4 GiB on device 1; NVML says 73 % until `lost`
    makes it fail as a GPU fallen off the bus does."""

    UUID = "58e5b2c4-0000-4000-8000-00000000abcd"

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import pynvml
        import torch

        self.handles: list[str] = []
        self.lost = False  # set: NVML fails from then on
        monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByUUID", self._handle)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", self._utilization)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(uuid=self.UUID))
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index: (0.5, 1.5)[index] * GIB)
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: (1, 4)[index] * GIB)

    def _handle(self, uuid: str) -> str:
        self.handles.append(uuid)
        return f"handle of {uuid}"

    def _utilization(self, handle: str) -> SimpleNamespace:
        import pynvml

        if self.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        assert handle == f"handle of GPU-{self.UUID}"
        return SimpleNamespace(gpu=73, memory=20)


def test_the_sampler_on_a_gpu_reports_torch_memory_and_nvml_utilisation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gpu = _FakeGpu(monkeypatch)
    sampler = Sampler("cuda:1", tmp_path)
    assert gpu.handles == [f"GPU-{gpu.UUID}"], "NVML finds the GPU by its UUID, not CUDA's index"
    assert sampler.missing == {}
    sample = sampler.sample()
    assert set(sample.values) == set(SYSTEM_KEYS) and sample.missing == {}
    assert sample.values["system/gpu_mem_allocated_gib"] == 1.5 and sample.values["system/gpu_mem_reserved_gib"] == 4
    assert sample.values["system/gpu_util_percent"] == 73.0

    gpu.lost = True
    with caplog.at_level(logging.WARNING, logger="worker.system_metrics"):
        lost, later = sampler.sample(), sampler.sample()
    assert set(lost.values) == set(SYSTEM_KEYS) - {"system/gpu_util_percent"}, "the other measurements go on"
    assert lost.values["system/gpu_mem_reserved_gib"] == 4
    assert lost.missing == {"system/gpu_util_percent": "none: NVML failed (NVMLError_GpuIsLost: GPU is lost)"}
    assert later.missing == lost.missing and "system/gpu_util_percent" not in later.values
    assert [r.getMessage() for r in caplog.records] == [
        "system metrics: GPU utilisation is no longer sampled: none: NVML failed (NVMLError_GpuIsLost: GPU is lost)"
    ], "said once, not every sample"


def test_a_gpu_without_nvml_still_reports_torch_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml

    _FakeGpu(monkeypatch)

    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    sampler = Sampler("cuda", tmp_path)
    why = "none: NVML unavailable (NVMLError_LibraryNotFound: NVML Shared Library Not Found)"
    assert sampler.missing == {"system/gpu_util_percent": why}, "the event the worker logs at the start says why"
    sample = sampler.sample()
    assert sample.missing == sampler.missing and set(sample.values) == set(SYSTEM_KEYS) - set(sample.missing)
    assert sample.values["system/gpu_mem_allocated_gib"] == 0.5, "plain cuda is device 0"


class _Seconds:
    """Real samples a second apart (a real sampler's come `interval` apart), without waiting."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler, self.n = sampler, 0

    def sample(self) -> Sample:
        self.n += 1
        return replace(self.sampler.sample(), wall_time=1.8e9 + self.n)


def test_system_points_survive_a_crash_and_a_replay_without_duplicates(live_server: LiveServer, tmp_path: Path) -> None:
    api = live_server.client()
    run_id = create_run(api)["id"]
    attempt = claim_run(api, register(api))["attempt"]
    folder = tmp_path / "box"
    down = Outbox(ServerClient("http://127.0.0.1:9", live_server.token), run_id, attempt, folder, max_backoff_s=0.2)
    seconds = cast(Sampler, _Seconds(Sampler("cpu", tmp_path)))  # duck-typed: SystemMonitor only calls sample()
    monitor = SystemMonitor(seconds, down.metrics, interval=0.05)
    monitor.start()
    time.sleep(0.3)
    monitor.stop()  # the server was down all along: the points are in the journal only
    down.close(timeout=0.2)
    journaled = sum(1 for _ in (folder / f"outbox-{attempt}.jsonl").open())
    assert journaled >= 2
    for _ in range(2):  # the process restarts; the second time as if it died before writing the ack
        box = Outbox(ServerClient(live_server.url, live_server.token), run_id, attempt, folder)
        assert box.close(timeout=10)
        (folder / f"outbox-{attempt}.acked").unlink()
    series = api.get(f"/api/runs/{run_id}/system").json()["series"]
    cpu = series["system/cpu_percent"]
    assert cpu["total"] == journaled and cpu["steps"] == sorted(set(cpu["steps"]))
    assert [int(w) for w in cpu["wall_times"]] == cpu["steps"], "a system point's step is its Unix second"
    assert not set(series) & set(GPU_KEYS)
    assert api.get(f"/api/runs/{run_id}").json()["step"] == 0, "samples are no training progress"


def _captured(records: list[logging.LogRecord]) -> list[dict]:
    sent: list[dict] = []
    capture = ConsoleCapture(sent.append)
    for record in records:
        capture.handle(record)
    return [line for body in sent for line in body["lines"]]


def test_console_lines_are_redacted_bounded_and_a_traceback_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    log = logging.getLogger("worker.test")
    try:
        raise RuntimeError(f"401 for Bearer {TOKEN}")
    except RuntimeError:
        failed = log.makeRecord(log.name, logging.ERROR, __file__, 1, "upload failed", (), sys.exc_info())
    lines = _captured(
        [
            log.makeRecord(log.name, logging.INFO, __file__, 1, "token %s", (TOKEN,), None),
            failed,
            log.makeRecord(log.name, logging.WARNING, __file__, 1, "x" * 50_000, (), None),
            log.makeRecord("worker.outbox", logging.WARNING, __file__, 1, "retry", (), None),
        ]
    )
    assert len(lines) == 4  # the outbox's own records are kept out only on its delivery thread
    assert all(TOKEN not in line["text"] for line in lines) and "hf_***" in lines[0]["text"]
    assert lines[1]["level"] == "error" and "Traceback (most recent call last)" in lines[1]["text"]
    assert lines[1]["text"].rstrip().endswith("RuntimeError: 401 for Bearer hf_***")
    assert len(lines[2]["text"]) <= CONSOLE_TEXT and "characters left out" in lines[2]["text"]
    assert len({line["uid"] for line in lines}) == 4


def _post(client: TestClient, run_id: int, attempt: int, *lines: dict) -> None:
    client.post(f"/api/runs/{run_id}/console", json={"attempt": attempt, "lines": list(lines)}).raise_for_status()


def test_console_is_stored_once_bounded_folded_behind_the_token_and_deleted_with_its_run(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "KEEP", 5)
    run_id = create_run(client)["id"]
    attempt = claim_run(client, register(client))["attempt"]
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad'
    lines = [{"uid": f"{i:032x}", "ts": 1.8e9 + i, "level": "info", "text": f"line {i}"} for i in range(7)]
    lines[6] = {**lines[6], "level": "error", "text": trace}
    _post(client, run_id, attempt, *lines[:4])
    _post(client, run_id, attempt, *lines[2:])  # a replayed write: lines 2 and 3 again
    shown = client.get(f"/api/runs/{run_id}/console").json()
    assert [c["text"] for c in shown] == [f"line {i}" for i in range(2, 6)] + [trace], "the newest 5, each once"
    assert shown[-1]["summary"] == "ValueError: bad" and shown[0]["summary"] is None
    assert (
        client.post(
            f"/api/runs/{run_id}/console",
            json={"attempt": attempt, "lines": [{**lines[0], "uid": "a" * 32, "text": "x" * (CONSOLE_TEXT + 1)}]},
        ).status_code
        == 422
    )
    page = client.get(f"/runs/{run_id}/panels").text
    assert "<summary>ValueError: bad</summary>" in page and "line 5" in page
    assert client.get(f"/api/runs/{run_id}/console", headers={"Authorization": "Bearer wrong"}).status_code == 401
    client.post(f"/api/runs/{run_id}/cancel").raise_for_status()
    client.post(f"/api/runs/{run_id}/finish", json={"attempt": attempt, "status": "cancelled"})
    client.delete(f"/api/runs/{run_id}").raise_for_status()
    db = sqlite3.connect(app_of(client).state.settings.data_dir / "dlite.db")
    assert db.execute("SELECT COUNT(*) FROM console_lines").fetchone() == (0,)
