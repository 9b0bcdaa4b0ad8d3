"""The run page of a million-step run loads its data in under a second (issue budget,
2-core CPU): the page itself plus one /charts request for its five series."""

from __future__ import annotations

import math
import time

import pytest

from app.services import metrics
from app.services.dashboard import charts
from tests.app_helpers import create_run

STEPS = 1_000_000
CHART_KEYS = tuple(k for c in charts(3) for k in c["keys"])  # the default horizons, 5,5,9


@pytest.mark.slow  # inserting 5M points takes about a minute; the read is what is timed
def test_million_step_run_page_data_loads_in_under_a_second(client) -> None:
    rid = create_run(client)["id"]
    chunk = 100_000
    for n, key in enumerate(CHART_KEYS):
        for lo in range(0, STEPS, chunk):
            with client.app.state.db.write() as session:
                metrics.upsert_points(
                    session,
                    rid,
                    [
                        {
                            "key": key,
                            "step": s,
                            "value": math.exp(-s / STEPS) + 0.1 * math.sin(s * (n + 1)),
                            "wall_time": float(s),
                        }
                        for s in range(lo, lo + chunk)
                    ],
                    notify=False,
                )
    timings = []
    for _ in range(3):
        t = time.perf_counter()
        assert client.get(f"/runs/{rid}").status_code == 200
        series = client.get(f"/api/runs/{rid}/charts", params={"max_points": 1000}).json()["series"]
        timings.append(time.perf_counter() - t)
        assert set(series) == set(CHART_KEYS)
        assert all(s["total"] == STEPS and len(s["steps"]) <= 1000 for s in series.values())
    print(
        f"run page + charts of {len(CHART_KEYS)} x {STEPS:,} points: {', '.join(f'{1000 * t:.0f} ms' for t in timings)}"
    )
    assert max(timings) < 1.0, timings
