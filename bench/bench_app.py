"""Benchmark of the run server, printed as JSON.

1. Metric ingest through a real uvicorn server: a worker posts batches of 1000 points
   (the protocol's POST /api/runs/{id}/metrics); points/s per round, median reported.
2. Chart reads: a run with 5 series of 1,000,000 steps each (inserted directly through
   the service layer), timing GET /api/runs/{id}/metrics?key=...&max_points=2000 per
   series; median of several reads reported per series.

Usage: python bench/bench_app.py [--rounds 5] [--batches 20] [--steps 1000000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.db import Database  # noqa: E402
from app.services import metrics, runs  # noqa: E402

SERIES = ("loss0", "loss1", "loss2", "invdyn_loss", "score")  # the run page's chart series


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data_dir: Path, token: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "DLITE_TOKEN": token, "PYTHONPATH": str(ROOT)}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.server", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def bench_ingest(c: httpx.Client, rounds: int, batches: int) -> dict:
    rid = c.post("/api/runs", json={"task": "hopper-medium-v2", "config": {}}).json()["id"]
    wid = c.post("/api/workers/register", json={"name": "bench"}).json()["worker_id"]
    attempt = c.post(f"/api/workers/{wid}/claim").json()["attempt"]
    rates, step = [], 0
    for _ in range(rounds):
        bodies = []
        for _ in range(batches):
            bodies.append(
                {
                    "attempt": attempt,
                    "points": [
                        {"key": "loss", "step": step + i, "value": math.sin(step + i), "wall_time": time.time()}
                        for i in range(1000)
                    ],
                }
            )
            step += 1000
        t = time.perf_counter()
        for body in bodies:
            c.post(f"/api/runs/{rid}/metrics", json=body).raise_for_status()
        rates.append(batches * 1000 / (time.perf_counter() - t))
    return {
        "batch_points": 1000,
        "batches_per_round": batches,
        "rounds": rounds,
        "points_per_s_median": round(statistics.median(rates)),
        "points_per_s_rounds": [round(r) for r in rates],
    }


def bench_downsample(c: httpx.Client, db: Database, steps: int, reads: int) -> dict:
    with db.write() as session:
        rid = runs.create_run(session, "hopper-medium-v2", "bench-1M", {}).id
        assert rid is not None  # set by the flush
    t = time.perf_counter()
    chunk = 100_000
    for n, key in enumerate(SERIES):
        for lo in range(0, steps, chunk):
            with db.write() as session:
                metrics.upsert_points(
                    session,
                    rid,
                    [
                        {
                            "key": key,
                            "step": s,
                            "value": math.exp(-s / steps) + 0.1 * math.sin(s * (n + 1)),
                            "wall_time": float(s),
                        }
                        for s in range(lo, min(lo + chunk, steps))
                    ],
                    notify=False,
                )
    insert_s = time.perf_counter() - t
    per_series = {}
    for key in SERIES:
        times = []
        for _ in range(reads):
            t = time.perf_counter()
            r = c.get(f"/api/runs/{rid}/metrics", params={"key": key, "max_points": 2000})
            r.raise_for_status()
            times.append(time.perf_counter() - t)
        body = r.json()
        assert body["total"] == steps and len(body["steps"]) <= 2000
        per_series[key] = {
            "median_ms": round(1000 * statistics.median(times), 1),
            "points_returned": len(body["steps"]),
        }
    page = []
    for _ in range(reads):  # what a browser opening the run page asks for: the HTML, then all chart data
        t = time.perf_counter()
        c.get(f"/runs/{rid}").raise_for_status()
        c.get(f"/api/runs/{rid}/charts").raise_for_status()
        page.append(time.perf_counter() - t)
    return {
        "steps_per_series": steps,
        "series": len(SERIES),
        "reads_per_series": reads,
        "service_insert_points_per_s": round(len(SERIES) * steps / insert_s),
        "get_metrics_max_points_2000": per_series,
        "median_ms_over_series": statistics.median(v["median_ms"] for v in per_series.values()),
        "run_page_html_plus_charts_median_ms": round(1000 * statistics.median(page), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=5)
    args = parser.parse_args()
    token = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _start(Path(tmp), token)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
                ingest = bench_ingest(c, args.rounds, args.batches)
                db = Database(f"sqlite:///{Path(tmp) / 'dlite.db'}")
                downsample = bench_downsample(c, db, args.steps, args.reads)
                db.dispose()
        finally:
            proc.terminate()
            proc.wait(10)
    print(
        json.dumps(
            {
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "database": "sqlite (WAL)"},
                "ingest": ingest,
                "downsample": downsample,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
