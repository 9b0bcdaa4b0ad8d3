"""Run, sweep and change-feed ids are never handed out twice, not even after a delete, and
migration 0007 (which makes them so on SQLite) keeps everything the runs own."""

from __future__ import annotations

import json
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.schema import CreateTable

from app.db import MIGRATIONS, Database
from app.main import create_app
from app.models import Change, Run, SQLModel, Sweep
from tests.app_helpers import app_of, create_run, make_settings, small_config
from tests.test_multi_run_api import api  # noqa: F401  (the SQLite and PostgreSQL app fixture)

CHILDREN = (
    "metric_points",
    "metric_blocks",
    "metric_nonfinite",
    "events",
    "checklist_items",
    "checkpoints",
    "evaluations",
    "commands",
    "changes",
)


def _insert(conn: Connection, table: str, **values: object) -> None:
    conn.execute(
        text(f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join(':' + k for k in values)})"), values
    )


def _run(conn: Connection, run_id: int, sweep_id: int | None = None) -> None:
    _insert(
        conn,
        "runs",
        id=run_id,
        uuid=f"{run_id:032x}",
        task="hopper-medium-v2",
        config="{}",
        status="succeeded",
        step=0,
        total_steps=10,
        attempt=1,
        created_at=0,
        updated_at=0,
        is_demo=0,
        sweep_id=sweep_id,
    )


def _children(conn: Connection, run_id: int) -> None:
    """One row of everything a run owns."""
    _insert(conn, "metric_points", run_id=run_id, key="loss0", step=10, value=0.5, wall_time=0)
    _insert(
        conn,
        "metric_blocks",
        run_id=run_id,
        key="loss0",
        block=0,
        n=1,
        min_step=10,
        min_value=0.5,
        min_wall_time=0,
        max_step=10,
        max_value=0.5,
        max_wall_time=0,
    )
    _insert(conn, "metric_nonfinite", run_id=run_id, key="loss0", step=20, value="nan", wall_time=0)
    _insert(conn, "events", run_id=run_id, ts=0, level="info", message="hello")
    _insert(conn, "checklist_items", run_id=run_id, key="smoke.steps", detail="10 steps", verified_at=1)
    _insert(conn, "checkpoints", run_id=run_id, step=10, size=1, sha256="ab" * 32, backup_state="hub")
    _insert(
        conn,
        "evaluations",
        run_id=run_id,
        step=10,
        kind="final",
        variant="R1",
        score_mean=1,
        score_std=0,
        returns="[]",
        scores="[]",
        n_envs=1,
        n_episodes=1,
        created_at=0,
    )
    _insert(conn, "commands", run_id=run_id, kind="backup", state="done", created_at=0, updated_at=0)
    _insert(conn, "changes", run_id=run_id, kind="run", data=json.dumps({"id": run_id}), ts=0)


def _counts(conn: Connection) -> dict[str, int]:
    return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in CHILDREN}


def test_migration_0007_keeps_what_runs_own_and_never_reissues_an_id(tmp_path: Path) -> None:
    """At 0006: a sweep, runs 1-3 with children, and run 4 deleted as DELETE /api/runs did it
    (children gone, its deletion in the feed). After the upgrade all is there, each sequence
    starts past the highest id used, and the next run is 5 (not 4), the next sweep 2."""
    settings = make_settings(tmp_path)
    db = Database(settings.database_url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0006")
        _insert(conn, "sweeps", id=1, name="paper", tasks="[]", seeds="[]", variants="[]", config="{}", created_at=0)
        for run_id in (1, 2, 3, 4):
            _run(conn, run_id, sweep_id=1 if run_id == 3 else None)
            _children(conn, run_id)
        conn.execute(text("DELETE FROM runs WHERE id = 4"))  # foreign keys are on: its children go with it
        _insert(conn, "changes", run_id=None, kind="run", data=json.dumps({"id": 4, "deleted": True}), ts=0)
        before = _counts(conn)
    assert before["events"] == 3 and before["changes"] == 4, "run 4's children were deleted with it"
    db.migrate()
    with db.engine.connect() as conn:
        assert _counts(conn) == before, "nothing a run owns is lost on the way"
        assert [tuple(r) for r in conn.execute(text("SELECT id, sweep_id FROM runs ORDER BY id"))] == [
            (1, None),
            (2, None),
            (3, 1),
        ]
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
        for table in ("runs", "sweeps", "changes"):
            ddl = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = :t"), {"t": table}).scalar_one()
            assert "AUTOINCREMENT" in ddl, table
        assert dict(conn.execute(text("SELECT name, seq FROM sqlite_sequence")).all()) == {
            "sweeps": 1,
            "runs": 4,
            "changes": 4,
        }
    db.dispose()
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {settings.token}"}) as c:
        assert create_run(c)["id"] == 5, "the deleted run 4's id is not handed out again"
        r = c.post(
            "/api/sweeps",
            json={
                "name": None,
                "tasks": ["hopper-medium-v2"],
                "seeds": [0],
                "variants": ["R1"],
                "config": small_config(),
            },
        )
        assert r.status_code == 201 and r.json()["id"] == 2
        assert [i["detail"] for i in c.get("/api/runs/2").json()["checklist"] if i["verified_at"]] == ["10 steps"]


def test_models_declare_the_autoincrement_the_migration_gives() -> None:
    """compare_metadata does not compare it, so the DDL the models would create says it."""
    for model in (Run, Sweep, Change):
        table = model.__table__  # type: ignore[union-attr]  # set by SQLModel's table=True; its types omit it
        assert "AUTOINCREMENT" in str(CreateTable(table).compile(dialect=sqlite.dialect())), model


def test_a_deleted_runs_id_is_never_given_to_a_new_run(api: TestClient) -> None:  # noqa: F811
    assert [create_run(api)["id"] for _ in range(3)] == [1, 2, 3]
    assert api.delete("/api/runs/3").status_code == 200
    assert create_run(api)["id"] == 4
    assert api.get("/api/runs/3").status_code == 404


def test_the_change_feed_goes_on_past_a_deleted_runs_changes(client: TestClient) -> None:
    """A browser that has seen run 2's newest changes must still get the deletion: its
    change id lies past theirs although those changes went with the run."""
    create_run(client)
    run = create_run(client)
    client.patch(f"/api/runs/{run['id']}", json={"note": "the newest change is this run's"})
    engine = app_of(client).state.db.engine
    with engine.connect() as conn:
        seen = conn.execute(text("SELECT MAX(id) FROM changes")).scalar_one()
    assert client.delete(f"/api/runs/{run['id']}").status_code == 200
    with engine.connect() as conn:
        [(change_id, data)] = conn.execute(text("SELECT id, data FROM changes WHERE run_id IS NULL AND kind = 'run'"))
    assert json.loads(data)["deleted"] is True and change_id > seen
