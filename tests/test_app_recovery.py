"""What the server keeps when a run goes wrong: non-finite metric values, late points of a
fenced-off attempt, leases across a server restart, repeated evaluations, pruned
checkpoints, run UUIDs (issue 10)."""

from __future__ import annotations

import time
import uuid

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.db import MIGRATIONS, Database
from app.main import create_app
from tests.app_helpers import claim, claim_run, create_run, make_settings, register

SHA = "cd" * 32


def _point(step: int, value: float | None, nonfinite: str | None = None, key: str = "loss0") -> dict:
    point = {"key": key, "step": step, "value": value, "wall_time": 1000.0 + step}
    return {**point, "nonfinite": nonfinite} if nonfinite else point


def _events(c: TestClient, run_id: int) -> list[dict]:
    return c.get(f"/api/runs/{run_id}/events").json()


def test_non_finite_values_are_kept_named_and_announced_once(client) -> None:
    rid = create_run(client)["id"]
    claim(client, register(client))
    url = f"/api/runs/{rid}/metrics"
    points = [_point(10, 0.5), _point(20, None, "nan"), _point(30, None, "inf"), _point(40, 0.25)]
    assert client.post(url, json={"attempt": 1, "points": points}).json() == {"accepted": 4, "stale": False}
    client.post(url, json={"attempt": 1, "points": [_point(50, None, "-inf")]})
    series = client.get(url, params={"key": "loss0"}).json()
    assert series["steps"] == [10, 40] and series["values"] == [0.5, 0.25], "charts see finite values only"
    assert series["nonfinite"]["steps"] == [20, 30, 50]
    assert series["nonfinite"]["values"] == ["nan", "inf", "-inf"]
    warnings = [e for e in _events(client, rid) if "non-finite" in e["message"]]
    assert [(e["level"], e["message"]) for e in warnings] == [("warning", "loss0 became non-finite (nan) at step 20")]
    export = client.get(f"/api/runs/{rid}/export").json()
    assert export["nonfinite_metrics"]["loss0"] == [[20, "nan", 1020.0], [30, "inf", 1030.0], [50, "-inf", 1050.0]]
    # a step is finite or not, never both: a resent finite value replaces the marker, and back
    client.post(url, json={"attempt": 1, "points": [_point(20, 0.75), _point(40, None, "nan")]})
    series = client.get(url, params={"key": "loss0"}).json()
    assert series["steps"] == [10, 20] and series["nonfinite"]["steps"] == [30, 40, 50]
    blocks = client.get(f"/api/runs/{rid}/charts").json()["series"]["loss0"]
    assert blocks["total"] == 2


def test_a_loss_that_stays_non_finite_is_thinned_in_chart_answers(client) -> None:
    """With on_nonfinite=continue a diverged loss can be NaN at every logged step: the
    answers the charts read stay bounded (first and last kept, the total said), the
    export keeps every one."""
    rid = create_run(client)["id"]
    claim(client, register(client))
    url = f"/api/runs/{rid}/metrics"
    points = [_point(10, 0.5)] + [_point(step, None, "nan") for step in range(20, 50_010, 10)]
    assert client.post(url, json={"attempt": 1, "points": points}).json()["accepted"] == 5_000
    series = client.get(url, params={"key": "loss0", "max_points": 100}).json()
    bad = series["nonfinite"]
    assert bad["total"] == 4_999 and len(bad["steps"]) == 100 and bad["steps"][0] == 20 and bad["steps"][-1] == 50_000
    assert bad["steps"] == sorted(set(bad["steps"])) and set(bad["values"]) == {"nan"}
    charts = client.get(f"/api/runs/{rid}/charts", params={"max_points": 200}).json()["series"]["loss0"]
    assert charts["nonfinite"]["total"] == 4_999 and len(charts["nonfinite"]["steps"]) == 200
    assert len(client.get(f"/api/runs/{rid}/export").json()["nonfinite_metrics"]["loss0"]) == 4_999


@pytest.mark.parametrize(
    "point",
    [
        {"key": "loss0", "step": 1, "value": None, "wall_time": 1.0},
        {"key": "loss0", "step": 1, "value": 1.0, "nonfinite": "nan", "wall_time": 1.0},
        {"key": "loss0", "step": 1, "value": None, "nonfinite": "NaN", "wall_time": 1.0},
        {"key": "loss0", "step": 1, "value": "NaN", "wall_time": 1.0},
    ],
)
def test_a_point_is_a_finite_value_or_a_named_non_finite_one(client, point) -> None:
    rid = create_run(client)["id"]
    claim(client, register(client))
    r = client.post(f"/api/runs/{rid}/metrics", json={"attempt": 1, "points": [point]})
    assert r.status_code == 422, r.text


def test_late_points_of_a_fenced_off_attempt_fill_gaps_and_never_overwrite(tmp_path) -> None:
    s = make_settings(tmp_path, lease_seconds=0.3, lease_sweep_seconds=60)
    with TestClient(create_app(s), headers={"Authorization": f"Bearer {s.token}"}) as c:
        rid = create_run(c)["id"]
        assert claim_run(c, register(c, "old"))["attempt"] == 1
        url = f"/api/runs/{rid}/metrics"
        c.post(url, json={"attempt": 1, "points": [_point(10, 1.0)]})
        time.sleep(0.8)  # the restart grace (one lease) and then the lease run out
        assert claim_run(c, register(c, "new"))["attempt"] == 2
        c.post(url, json={"attempt": 2, "points": [_point(30, 2.0)]})
        late = [_point(10, 9.0), _point(20, 1.0), _point(30, 1.0), _point(40, None, "nan")]
        r = c.post(url, json={"attempt": 1, "points": late})
        assert r.status_code == 200 and r.json() == {"accepted": 2, "stale": True}
        series = c.get(url, params={"key": "loss0"}).json()
        assert list(zip(series["steps"], series["values"])) == [(10, 1.0), (20, 1.0), (30, 2.0)]
        assert series["nonfinite"]["steps"] == [40]
        assert c.get(f"/api/runs/{rid}").json()["step"] == 30, "late points are not progress"
        assert c.post(url, json={"attempt": 3, "points": late}).status_code == 409, "no such attempt yet"
        assert c.post(f"/api/runs/{rid}/events", json={"attempt": 1, "message": "x"}).status_code == 409


def test_a_restarted_server_gives_running_leases_one_lease_of_grace(tmp_path) -> None:
    s = make_settings(tmp_path, lease_seconds=2.0, lease_sweep_seconds=0.05)
    with TestClient(create_app(s), headers={"Authorization": f"Bearer {s.token}"}) as c:
        rid = create_run(c)["id"]
        claim(c, register(c))
    time.sleep(2.5)  # the server is down longer than the lease
    with TestClient(create_app(s), headers={"Authorization": f"Bearer {s.token}"}) as c:
        time.sleep(0.3)  # several sweeps, and list calls sweep too
        assert c.get("/api/runs").json()[0]["status"] == "running"
        hb = c.post(f"/api/runs/{rid}/heartbeat", json={"attempt": 1, "step": 5})
        assert hb.status_code == 200, "the live worker keeps its run"
        assert any("keeps its lease" in e["message"] for e in _events(c, rid))
        time.sleep(2.5)  # a worker that stays silent loses the run one lease later
        run = c.get(f"/api/runs/{rid}").json()
        assert run["status"] == "queued" and run["attempt"] == 1


def test_an_evaluation_sent_twice_is_one_row_per_variant(client) -> None:
    rid = create_run(client)["id"]
    claim(client, register(client))
    ev = {
        "attempt": 1,
        "step": 2000,
        "kind": "quick",
        "score_mean": 40.0,
        "score_std": 1.0,
        "returns": [1.0],
        "scores": [40.0],
        "n_envs": 1,
        "n_episodes": 1,
    }
    for score in (40.0, 42.0):
        assert client.post(f"/api/runs/{rid}/evaluations", json={**ev, "score_mean": score}).status_code == 200
    client.post(f"/api/runs/{rid}/evaluations", json={**ev, "variant": "R2"})
    evaluations = client.get(f"/api/runs/{rid}").json()["evaluations"]
    assert [(e["step"], e["kind"], e["variant"], e["score_mean"]) for e in evaluations] == [
        (2000, "quick", "R1", 42.0),
        (2000, "quick", "R2", 40.0),
    ]


def test_a_pruned_checkpoint_keeps_its_backup_state(client) -> None:
    rid = create_run(client)["id"]
    claim(client, register(client))
    url = f"/api/runs/{rid}/checkpoints"
    base = {"attempt": 1, "step": 100, "size": 10, "sha256": SHA}
    client.post(url, json={**base, "backup_state": "hub", "hub_url": "https://huggingface.co/u/r"})
    assert client.post(url, json={**base, "pruned": True}).status_code == 200
    [ckpt] = client.get(f"/api/runs/{rid}").json()["checkpoints"]
    assert ckpt["pruned"] is True and ckpt["backup_state"] == "hub" and ckpt["hub_url"] == "https://huggingface.co/u/r"
    page = client.get(f"/runs/{rid}").text
    assert "pruned from disk" in page


def test_runs_have_a_uuid_that_the_claim_hands_out(client) -> None:
    first, second = create_run(client), create_run(client)
    assert len({first["uuid"], second["uuid"]}) == 2 and all(len(r["uuid"]) == 32 for r in (first, second))
    assert claim_run(client, register(client))["run_uuid"] == first["uuid"]


def test_migration_0004_gives_old_runs_uuids_and_drops_duplicate_evaluations(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        for run_id in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO runs (id, task, config, status, step, total_steps, attempt, created_at, "
                    "updated_at, is_demo) VALUES (:id, 'hopper-medium-v2', '{}', 'succeeded', 0, 10, 1, "
                    "0, 0, 0)"
                ),
                {"id": run_id},
            )
        conn.execute(
            text("INSERT INTO metric_points (run_id, key, step, value, wall_time) VALUES (2, 'loss0', 10, 0.5, 0)")
        )
        for score in (1.0, 2.0):
            conn.execute(
                text(
                    "INSERT INTO evaluations (run_id, step, kind, variant, score_mean, score_std, returns, "
                    "scores, n_envs, n_episodes, created_at) VALUES (1, 2000, 'quick', 'R1', :s, 0, '[]', "
                    "'[]', 1, 1, 0)"
                ),
                {"s": score},
            )
    db.migrate()
    with db.engine.connect() as conn:
        uuids = [u for (u,) in conn.execute(text("SELECT uuid FROM runs"))]
        scores = [s for (s,) in conn.execute(text("SELECT score_mean FROM evaluations"))]
        points = conn.execute(text("SELECT COUNT(*) FROM metric_points")).scalar_one()
    assert len(set(uuids)) == 2 and all(uuid.UUID(hex=u) for u in uuids)
    assert scores == [2.0], "the newest of the duplicates is kept"
    assert points == 1, "nothing a run owns is lost on the way"
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
        command.upgrade(cfg, "head")
