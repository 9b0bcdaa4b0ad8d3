"""Run API, config validation, settings, migrations and import hygiene."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.db import Database
from app.models import SQLModel
from app.settings import load_or_create_token, settings_from_env
from dlite.config import Config, from_dict, schema
from tests.app_helpers import ROOT, create_run, small_config, subprocess_env


def test_create_list_get_store_the_full_resolved_config(client) -> None:
    run = create_run(client, batch_size=64)
    assert run["status"] == "queued" and run["attempt"] == 0 and run["stage"] is None
    expected = from_dict({**small_config(batch_size=64), "task": "hopper-medium-v2"})
    assert run["config"] == expected.to_dict()
    assert run["total_steps"] == expected.total_steps
    assert client.get("/api/runs").json()[0]["id"] == run["id"]
    got = client.get(f"/api/runs/{run['id']}").json()
    assert got["config"] == run["config"]
    assert [i["key"] for i in got["checklist"]][:3] == ["data.ready", "device.check", "smoke.steps"]
    assert got["checklist"][2]["label"] == f"{expected.smoke_steps} training steps done"
    assert got["paper"]["r1"]["mean"] == 99.5 and got["checkpoints"] == [] and got["evaluations"] == []


def test_defaults_are_dlite_defaults(client) -> None:
    r = client.post("/api/runs", json={"task": "walker2d-medium-v2", "config": {}})
    assert r.status_code == 201
    assert r.json()["config"] == Config(task="walker2d-medium-v2").to_dict()
    assert r.json()["total_steps"] == Config().total_steps


@pytest.mark.parametrize(
    "config, field",
    [
        ({"no_such_setting": 1}, "no_such_setting"),
        ({"batch_size": "big"}, "batch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"diffusion_gradient_steps": -5}, "diffusion_gradient_steps"),
    ],
)
def test_bad_config_is_a_422_naming_the_field(client, config, field) -> None:
    r = client.post("/api/runs", json={"task": "hopper-medium-v2", "config": config})
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "config", field] and error["type"] == "value_error" and error["msg"]


def test_unknown_task_is_a_422_on_the_task_field(client) -> None:
    r = client.post("/api/runs", json={"task": "pong-v0", "config": {}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "task"]
    assert client.get("/api/runs").json() == []


def test_schema_comes_from_dlite(client) -> None:
    body = client.get("/api/config/schema").json()
    assert body["fields"] == schema()
    assert "hopper-medium-v2" in body["tasks"]


def test_missing_run_is_404(client) -> None:
    assert client.get("/api/runs/999").status_code == 404
    assert client.post("/api/runs/999/cancel").status_code == 404


def test_healthz_needs_no_token(client) -> None:
    assert client.get("/healthz", headers={"Authorization": ""}).json() == {"ok": True}


def test_importing_the_app_does_not_import_torch() -> None:
    code = "import sys, app.main, app.server; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), check=True)


def test_protocol_module_is_light_for_the_worker() -> None:
    code = (
        "import sys, app.protocol; heavy = {'torch', 'fastapi', 'sqlalchemy', 'sqlmodel', 'starlette'}; "
        "bad = heavy & {m.split('.')[0] for m in sys.modules}; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), check=True)


def test_migrating_an_empty_database_then_again_is_a_no_op(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    db.migrate()
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
        tables = set(inspect(conn).get_table_names())
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
    assert {"runs", "metric_points", "changes", "alembic_version"} <= tables
    db.migrate()
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one() == version
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1


def test_token_file_is_private_and_reused(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DLITE_TOKEN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    token = load_or_create_token(tmp_path)
    assert len(token) >= 40
    assert stat.S_IMODE(os.stat(tmp_path / "token").st_mode) == 0o600
    assert load_or_create_token(tmp_path) == token
    s = settings_from_env(tmp_path)
    assert s.token == token and s.database_url == f"sqlite:///{tmp_path.resolve() / 'dlite.db'}"
    assert s.lease_seconds == 60
    monkeypatch.setenv("DLITE_TOKEN", "from-env-" + "x" * 20)
    monkeypatch.setenv("DLITE_LEASE_SECONDS", "7")
    s = settings_from_env(tmp_path)
    assert s.token == "from-env-" + "x" * 20 and s.lease_seconds == 7
    monkeypatch.setenv("DLITE_TOKEN", "hunter2")
    with pytest.raises(SystemExit, match="DLITE_TOKEN is too short"):
        settings_from_env(tmp_path)


def test_nothing_in_app_mentions_the_hub_token() -> None:
    for path in (ROOT / "app").rglob("*"):
        if path.is_file() and path.suffix in {".py", ".html", ".css", ".js", ".mako"}:
            assert "HF_TOKEN" not in path.read_text(), path


def test_openapi_and_docs_need_the_token(client) -> None:
    schema = client.get("/api/openapi.json").json()
    assert "/api/runs" in schema["paths"] and "/api/workers/{worker_id}/claim" in schema["paths"]
    assert client.get("/docs").status_code == 200
    anonymous = client.get("/api/openapi.json", headers={"Authorization": ""})
    assert anonymous.status_code == 401


def test_openapi_names_the_models_of_the_answers(client) -> None:
    """Swagger, clients and the fuzz test see what a run, a sweep, a result row or a chart is
    (app/schemas.py), not an object of anything."""
    doc = client.get("/api/openapi.json").json()
    models = doc["components"]["schemas"]

    def answer(path: str, method: str = "get", status: str = "200") -> dict:
        return doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]

    def ref(name: str) -> dict:
        return {"$ref": f"#/components/schemas/{name}"}

    assert answer("/api/runs/{run_id}") == ref("RunDetail")
    assert answer("/api/runs", "post", "201") == ref("RunDetail")
    assert answer("/api/runs")["items"] == ref("RunSummary")
    assert answer("/api/runs/{run_id}", "patch") == answer("/api/runs/{run_id}/retry", "post") == ref("RunSummary")
    assert answer("/api/runs/{run_id}/charts") == ref("ChartData")
    assert answer("/api/runs/{run_id}/metrics")["anyOf"] == [ref("MetricKeys"), ref("MetricSeries")]
    assert answer("/api/runs/{run_id}/events")["items"] == ref("EventOut")
    assert answer("/api/runs/{run_id}/console")["items"] == ref("ConsoleEntry")
    assert answer("/api/runs/{run_id}/export") == ref("RunExport")
    assert answer("/api/runs/{run_id}/backup", "post", "202") == ref("RunCommand")
    assert answer("/api/sweeps", "post", "201") == answer("/api/sweeps/{sweep_id}") == ref("SweepDetail")
    assert answer("/api/sweeps")["items"] == ref("SweepSummary")
    assert answer("/api/results") == ref("ResultsTable")
    assert answer("/api/compare") == ref("Comparison")
    assert answer("/api/config/schema") == ref("ConfigSchema")
    detail = models["RunDetail"]
    assert {
        "status",
        "step",
        "checkpoints",
        "evaluations",
        "checklist",
        "config",
        "metrics",
        "device_check",
        "change_id",
    } <= set(detail["required"])
    assert detail["additionalProperties"] is False, "every key a service writes is declared"
    assert detail["properties"]["checkpoints"]["items"] == ref("CheckpointOut")
    assert set(models["RunSummary"]["properties"]["status"]["enum"]) >= {"queued", "running", "succeeded"}
    assert models["MetricSeries"]["properties"]["values"]["items"] == {"type": "number"}
    assert models["ChartData"]["properties"]["series"]["additionalProperties"] == ref("MetricSeries")
    assert models["ResultsTable"]["properties"]["rows"]["items"] == ref("ResultRow")
    assert list(models["ResultRow"]["properties"])[:3] == ["task", "variant", "n"]
