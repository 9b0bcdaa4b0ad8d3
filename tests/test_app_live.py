"""Against a real uvicorn process: claim races between worker processes, and SSE."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.app_helpers import ROOT, LiveServer, start_server, stop_server, subprocess_env

CLAIMER = """
import sys, httpx
url, token, name = sys.argv[1:]
c = httpx.Client(base_url=url, headers={"Authorization": "Bearer " + token}, timeout=60)
wid = c.post("/api/workers/register", json={"name": name}).json()["worker_id"]
while True:
    r = c.post(f"/api/workers/{wid}/claim")
    if r.status_code == 204:
        break
    r.raise_for_status()
    print(r.json()["run_id"], flush=True)
"""


def _claim_race(server: LiveServer) -> None:
    with server.client() as c:
        ids = [c.post("/api/runs", json={"task": "hopper-medium-v2", "config": {}}).json()["id"] for _ in range(20)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, server.url, server.token, f"w{i}"],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    claimed: Counter[int] = Counter()
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        claimed.update(int(line) for line in out.split())
    assert sorted(claimed) == sorted(ids) and set(claimed.values()) == {1}, claimed
    with server.client() as c:
        runs = c.get("/api/runs").json()
    assert {r["status"] for r in runs} == {"running"} and {r["attempt"] for r in runs} == {1}


def test_claim_race_between_worker_processes(live_server) -> None:
    _claim_race(live_server)


@pytest.mark.postgres
def test_claim_race_on_postgres(tmp_path, postgres_url) -> None:
    server = start_server(tmp_path, database_url=postgres_url)
    try:
        _claim_race(server)
    finally:
        stop_server(server)


def _messages(response: httpx.Response, want: int) -> list[tuple[int, dict]]:
    """Read SSE messages until `want` data messages arrived (keep-alives are skipped)."""
    out: list[tuple[int, dict]] = []
    event_id: int | None = None
    for line in response.iter_lines():
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            assert event_id is not None, f"a data message before any id: {line}"
            out.append((event_id, json.loads(line[6:])))
            if len(out) == want:
                return out
    raise AssertionError(f"stream ended after {out}")


def test_sse_streams_metrics_and_resumes_after_last_event_id(live_server) -> None:
    with live_server.client() as c:
        rid = c.post("/api/runs", json={"task": "hopper-medium-v2", "config": {}}).json()["id"]
        wid = c.post("/api/workers/register", json={"name": "w"}).json()["worker_id"]
        assert c.post(f"/api/workers/{wid}/claim").json()["attempt"] == 1

        def points(lo: int, hi: int) -> list[dict]:
            return [{"key": "loss", "step": s, "value": s / 10, "wall_time": 1.0} for s in range(lo, hi)]

        stream = live_server.client(timeout=httpx.Timeout(10))
        with stream.stream("GET", f"/api/runs/{rid}/events/stream") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            c.post(f"/api/runs/{rid}/metrics", json={"attempt": 1, "points": points(0, 5)})
            [(first_id, msg)] = _messages(r, 1)
        assert msg["type"] == "metrics" and msg["run_id"] == rid
        assert [p["step"] for p in msg["data"]["points"]] == [0, 1, 2, 3, 4]

        c.post(f"/api/runs/{rid}/metrics", json={"attempt": 1, "points": points(5, 8)})
        c.post(f"/api/runs/{rid}/stage", json={"attempt": 1, "stage": "data"})
        with stream.stream("GET", f"/api/runs/{rid}/events/stream", headers={"Last-Event-ID": str(first_id)}) as r:
            got = _messages(r, 4)
        assert all(i > first_id for i, _ in got)
        kinds = [(m["type"], m["data"].get("step")) for _, m in got]
        assert kinds[:3] == [("run", 4), ("metrics", None), ("run", 7)], "logged metrics advance the step"
        assert [p["step"] for p in got[1][1]["data"]["points"]] == [5, 6, 7]
        assert got[3][1]["type"] == "run" and got[3][1]["data"]["stage"] == "data"

        with stream.stream("GET", "/api/runs/stream", params={"since": first_id}) as r:
            [(_, run_msg)] = _messages(r, 1)  # the list stream skips metrics
        assert run_msg["type"] == "run" and run_msg["data"]["id"] == rid
        stream.close()


def test_a_stream_opened_by_a_session_ends_when_the_session_is_revoked(live_server) -> None:
    """Logout ends everything the session opened: a live stream stops delivering, and a copy
    of the cookie cannot open a new one."""
    browser = httpx.Client(base_url=live_server.url, timeout=httpx.Timeout(10))
    assert browser.post("/login", data={"token": live_server.token, "next": "/"}).status_code in (200, 303)
    rid = live_server.client().post("/api/runs", json={"task": "hopper-medium-v2"}).json()["id"]
    cookies = dict(browser.cookies)
    ended = threading.Event()

    def read_stream() -> None:
        with httpx.Client(base_url=live_server.url, cookies=cookies, timeout=httpx.Timeout(30)) as tab:
            with tab.stream("GET", f"/api/runs/{rid}/events/stream", params={"since": 0}) as r:
                assert r.status_code == 200
                for _ in r.iter_lines():
                    pass
        ended.set()

    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    time.sleep(1.5)
    assert not ended.is_set(), "the stream stays open while the session lives"
    assert browser.post("/logout", data={"csrf": browser.cookies["csrf"]}).status_code == 303
    assert ended.wait(10), "the stream ended within seconds of the logout"
    with httpx.Client(base_url=live_server.url, cookies=cookies, timeout=10) as copy:
        assert copy.get(f"/api/runs/{rid}/events/stream").status_code == 401
