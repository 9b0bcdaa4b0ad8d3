"""Evaluation artifacts through the API: the fenced upload and its refusals, listing, range
requests, and what deleting a run removes (app/services/artifacts.py)."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app_helpers import claim_run, create_run, register

VIDEO = "R1-final-1000.webm"
PLANS_NAME = "R1-final-1000.plans.json"
WEBM, JSON = {"Content-Type": "video/webm"}, {"Content-Type": "application/json"}


def ebml(doctype: bytes = b"webm", payload: bytes = b"\x18\x53\x80\x67" + bytes(range(256)) * 4) -> bytes:
    """An EBML header (EBMLVersion 1, DocType) and a body: all the server looks at in a video."""
    header = b"\x42\x86\x81\x01" + b"\x42\x82" + bytes([0x80 | len(doctype)]) + doctype
    return b"\x1a\x45\xdf\xa3" + bytes([0x80 | len(header)]) + header + payload


def plans(step: int = 1000, variant: str = "R1") -> dict:
    return {
        "version": 1,
        "task": "hopper-medium-v2",
        "variant": variant,
        "checkpoint_step": step,
        "seed": 0,
        "dims": [{"index": 0, "name": "z"}, {"index": 1, "name": "angle"}],
        "default_dim": 1,
        "states": [[0.1 * t, -0.05 * t] for t in range(12)],
        "decisions": [
            {
                "t": 0,
                "levels": [
                    {"level": 0, "times": [0, 5, 10], "points": [[0, 0], [0.5, -0.2], [1, -0.5]]},
                    {"level": 1, "times": [0, 2, 5], "points": [[0, 0], [0.2, -0.1], [0.5, -0.2]]},
                ],
            }
        ],
        "episode_return": 321.5,
        "score": 12.25,
    }


@pytest.fixture
def running(client: TestClient) -> tuple[int, int]:
    run_id = create_run(client)["id"]
    return run_id, claim_run(client, register(client))["attempt"]


def put(client: TestClient, run_id: int, attempt: int, name: str, data: bytes, headers: dict):
    return client.put(f"/api/runs/{run_id}/artifacts/{name}?attempt={attempt}", content=data, headers=headers)


def files(settings: Settings, run_id: int) -> list[str]:
    folder = settings.data_dir / "artifacts" / str(run_id)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _loc(r) -> list:
    assert r.status_code == 422, r.text
    return r.json()["detail"][0]["loc"]


def test_upload_list_serve_and_replace(client, running, settings) -> None:
    run_id, attempt = running
    video, doc = ebml(), json.dumps(plans()).encode()
    r = put(client, run_id, attempt, VIDEO, video, WEBM)
    assert r.status_code == 200, r.text
    assert r.json() | {"created_at": 0} == {
        "name": VIDEO,
        "kind": "video",
        "variant": "R1",
        "eval_kind": "final",
        "step": 1000,
        "size": len(video),
        "sha256": hashlib.sha256(video).hexdigest(),
        "created_at": 0,
        "url": f"/api/runs/{run_id}/artifacts/{VIDEO}",
    }
    assert put(client, run_id, attempt, PLANS_NAME, doc, JSON).status_code == 200
    listed = client.get(f"/api/runs/{run_id}/artifacts").json()
    assert [a["name"] for a in listed] == [VIDEO, PLANS_NAME]
    assert [a["name"] for a in client.get(f"/api/runs/{run_id}").json()["artifacts"]] == [VIDEO, PLANS_NAME]
    got = client.get(f"/api/runs/{run_id}/artifacts/{PLANS_NAME}")
    assert got.headers["content-type"] == "application/json" and got.json() == plans()
    # a retried upload replaces the file and its row, and leaves nothing else behind
    again = ebml(payload=b"\x18\x53\x80\x67" + b"second take")
    assert put(client, run_id, attempt, VIDEO, again, WEBM).json()["size"] == len(again)
    served = client.get(f"/api/runs/{run_id}/artifacts/{VIDEO}")
    assert served.content == again and served.headers["content-type"] == "video/webm"
    assert len(client.get(f"/api/runs/{run_id}/artifacts").json()) == 2
    assert files(settings, run_id) == [PLANS_NAME, VIDEO]


def test_a_range_request_gets_206_with_those_bytes(client, running) -> None:
    run_id, attempt = running
    video = ebml()
    put(client, run_id, attempt, VIDEO, video, WEBM)
    r = client.get(f"/api/runs/{run_id}/artifacts/{VIDEO}", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == video[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(video)}"
    tail = client.get(f"/api/runs/{run_id}/artifacts/{VIDEO}", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == video[-10:]


@pytest.mark.parametrize(
    "name, data, headers, loc",
    [
        ("R3-final-1000.webm", ebml(), WEBM, ["path", "name"]),
        ("R1-final-1000.mp4", ebml(), WEBM, ["path", "name"]),
        ("../R1-final-1000.webm", ebml(), WEBM, ["path", "name"]),
        (VIDEO, ebml(), JSON, ["header", "content-type"]),
        (VIDEO, b"\x00\x00\x01\xb3" + bytes(100), WEBM, ["body"]),  # an MPEG stream: no EBML magic
        (VIDEO, ebml(doctype=b"matroska"), WEBM, ["body"]),  # EBML, but Matroska, not WebM
        (PLANS_NAME, b"{not json", JSON, ["body"]),
        (PLANS_NAME, json.dumps({**plans(), "score": "high"}).encode(), JSON, ["body", "score"]),
        (PLANS_NAME, json.dumps(plans()).replace("12.25", "NaN").encode(), JSON, ["body", "score"]),
        (PLANS_NAME, json.dumps({**plans(), "states": [[0.0]]}).encode(), JSON, ["body"]),  # one value, two dims
        (
            PLANS_NAME,
            json.dumps({**plans(), "decisions": plans()["decisions"] * 65}).encode(),
            JSON,
            ["body", "decisions"],
        ),
        (PLANS_NAME, json.dumps(plans(step=2000)).encode(), JSON, ["body"]),  # the name says step 1000
    ],
)
def test_what_is_not_a_webm_or_plans_of_its_name_is_a_422_naming_why(
    client, running, settings, name, data, headers, loc
) -> None:
    run_id, attempt = running
    r = put(client, run_id, attempt, name, data, headers)
    if name.startswith(".."):  # the client folds the dots away: no such route
        assert r.status_code == 404
    else:
        assert _loc(r) == loc and r.json()["detail"][0]["msg"]
    assert client.get(f"/api/runs/{run_id}/artifacts").json() == [] and files(settings, run_id) == []


def test_non_finite_numbers_deep_in_the_plans_are_refused(client, running) -> None:
    run_id, attempt = running
    doc = copy.deepcopy(plans())
    doc["decisions"][0]["levels"][1]["points"][2][1] = 1e400  # JSON's way to write infinity
    r = put(client, run_id, attempt, PLANS_NAME, json.dumps(doc).encode(), JSON)
    assert _loc(r) == ["body", "decisions", 0, "levels", 1, "points", 2, 1]


def test_stale_foreign_fenced_off_and_anonymous_uploads_are_refused(client, running, settings) -> None:
    run_id, attempt = running
    other = create_run(client)["id"]  # queued: no attempt of it may write
    assert put(client, other, attempt, VIDEO, ebml(), WEBM).status_code == 409
    assert put(client, run_id, attempt + 1, VIDEO, ebml(), WEBM).status_code == 409
    assert put(client, 999, 1, VIDEO, ebml(), WEBM).status_code == 404
    anonymous = client.put(
        f"/api/runs/{run_id}/artifacts/{VIDEO}?attempt={attempt}", content=ebml(), headers={**WEBM, "Authorization": ""}
    )
    assert anonymous.status_code == 401
    assert client.get(f"/api/runs/{run_id}/artifacts", headers={"Authorization": ""}).status_code == 401
    assert (
        client.post(f"/api/runs/{run_id}/finish", json={"attempt": attempt, "status": "succeeded"}).status_code == 200
    )
    assert put(client, run_id, attempt, VIDEO, ebml(), WEBM).status_code == 409  # fenced off by its own finish
    assert files(settings, run_id) == [] and files(settings, other) == []


def test_an_anonymous_read_of_an_artifact_file_is_refused(client, running, settings) -> None:
    """The files are the run's as much as its list is: without the token or a login, neither."""
    run_id, attempt = running
    video = ebml()
    assert put(client, run_id, attempt, VIDEO, video, WEBM).status_code == 200
    url = f"/api/runs/{run_id}/artifacts/{VIDEO}"
    with TestClient(create_app(settings)) as anon:
        for headers in ({}, {"Range": "bytes=0-9"}):
            r = anon.get(url, headers=headers)
            assert r.status_code == 401 and video[:4] not in r.content, headers  # no byte of the file
    assert client.get(url).content == video


def test_too_large_is_a_413(client, running, settings) -> None:
    run_id, attempt = running
    big_plans = json.dumps({**plans(), "task": "x" * (4 * 2**20)}).encode()
    r = put(client, run_id, attempt, PLANS_NAME, big_plans, JSON)
    assert r.status_code == 413 and "4 MiB" in r.json()["detail"]
    r = put(client, run_id, attempt, VIDEO, ebml(payload=bytes(settings.max_body_bytes)), WEBM)
    assert r.status_code == 413
    assert client.get(f"/api/runs/{run_id}/artifacts").json() == [] and files(settings, run_id) == []


def test_an_oversized_upload_without_a_length_is_cut_off_unread(settings: Settings, client, running) -> None:
    """Chunked, so no Content-Length to refuse it by: the server stops reading at the limit
    (it never holds the body) and keeps nothing of it."""
    run_id, attempt = running
    app, chunk, offered, sent, out = client.app, 2**20, 64, [], []

    async def receive() -> dict:
        sent.append(1)
        return {
            "type": "http.request",
            "body": ebml() if len(sent) == 1 else bytes(chunk),
            "more_body": len(sent) < offered,
        }

    async def send(message: dict) -> None:
        out.append(message)

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "root_path": "",
        "path": f"/api/runs/{run_id}/artifacts/{VIDEO}",
        "raw_path": f"/api/runs/{run_id}/artifacts/{VIDEO}".encode(),
        "query_string": f"attempt={attempt}".encode(),
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "headers": [(b"authorization", f"Bearer {settings.token}".encode()), (b"content-type", b"video/webm")],
    }
    asyncio.run(app(scope, receive, send))
    assert out[0]["status"] == 413
    assert len(sent) <= settings.max_body_bytes // chunk + 2 < offered
    assert files(settings, run_id) == []


def test_deleting_a_run_removes_its_artifact_files_and_rows(client, running, settings) -> None:
    run_id, attempt = running
    put(client, run_id, attempt, VIDEO, ebml(), WEBM)
    client.post(f"/api/runs/{run_id}/finish", json={"attempt": attempt, "status": "succeeded"})
    r = client.delete(f"/api/runs/{run_id}")
    assert r.status_code == 200 and str(settings.data_dir / "artifacts" / str(run_id)) in r.json()["removed_paths"]
    assert not (settings.data_dir / "artifacts" / str(run_id)).exists()
    with client.app.state.db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM artifacts").scalar_one() == 0


def test_a_listed_artifact_whose_file_is_gone_says_why(client, running, settings) -> None:
    run_id, attempt = running
    put(client, run_id, attempt, VIDEO, ebml(), WEBM)
    (settings.data_dir / "artifacts" / str(run_id) / VIDEO).unlink()
    r = client.get(f"/api/runs/{run_id}/artifacts/{VIDEO}")
    assert r.status_code == 404 and "not on this server" in r.json()["detail"]
    assert client.get(f"/api/runs/{run_id}/artifacts/R2-final-1.webm").status_code == 404


def test_migrations_make_the_artifacts_table_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.db import Database
    from app.models import SQLModel

    db = Database(postgres_url)
    db.migrate()
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
    db.dispose()
    with TestClient(
        create_app(Settings(data_dir=tmp_path, database_url=postgres_url, token="t" * 32)),
        headers={"Authorization": "Bearer " + "t" * 32},
    ) as c:
        run_id = create_run(c)["id"]
        attempt = claim_run(c, register(c))["attempt"]
        assert put(c, run_id, attempt, VIDEO, ebml(), WEBM).status_code == 200
        assert put(c, run_id, attempt, VIDEO, ebml(), WEBM).status_code == 200
        assert len(c.get(f"/api/runs/{run_id}/artifacts").json()) == 1
