"""What the API refuses at the edge, and how: integers the database cannot hold, NaN and
infinity, oversized text and bodies, and bad configs, each a 4xx naming the field (never
a 500), plus the styled not-found page for unknown page addresses."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.protocol import MAX_INT
from tests.app_helpers import claim_run, create_run, register

HUGE = 2**64


def _raw(client: TestClient, url: str, body: str):
    """Posts JSON text as is: Python's json module writes NaN/Infinity, as careless clients do."""
    return client.post(url, content=body.encode(), headers={"content-type": "application/json"})


def _fields(response) -> list[list]:
    assert response.status_code == 422, response.text
    return [e["loc"] for e in response.json()["detail"]]


@pytest.fixture
def running(client: TestClient) -> tuple[int, int]:
    run_id = create_run(client)["id"]
    return run_id, claim_run(client, register(client))["attempt"]


@pytest.mark.parametrize(
    "url",
    [
        f"/api/runs/{HUGE}",
        f"/api/runs/{HUGE}/events",
        f"/api/runs/{HUGE}/export",
        f"/api/runs/{HUGE}/metrics",
        f"/api/runs/{HUGE}/charts",
    ],
)
def test_path_integers_beyond_the_database_are_a_422_naming_them(client, url) -> None:
    assert _fields(client.get(url)) == [["path", "run_id"]]


def test_query_and_body_integers_beyond_the_database_are_a_422_naming_them(client, running) -> None:
    run_id, attempt = running
    assert _fields(client.get(f"/api/runs/{run_id}/events", params={"since": HUGE})) == [["query", "since"]]
    assert _fields(client.get("/api/runs/stream", params={"since": HUGE})) == [["query", "since"]]
    assert _fields(client.post(f"/api/runs/{run_id}/heartbeat", json={"attempt": attempt, "step": HUGE})) == [
        ["body", "step"]
    ]
    assert _fields(
        client.post(
            f"/api/runs/{run_id}/checkpoints", json={"attempt": attempt, "step": 1, "size": HUGE, "sha256": "a" * 64}
        )
    ) == [["body", "size"]]
    assert _fields(client.post(f"/api/runs/{run_id}/commands/{HUGE}", json={"attempt": attempt, "state": "done"})) == [
        ["path", "command_id"]
    ]
    # the largest storable value itself goes through to the database and back
    ok = client.post(f"/api/runs/{run_id}/heartbeat", json={"attempt": attempt, "step": MAX_INT})
    assert ok.status_code == 200, ok.text
    assert client.get(f"/api/runs/{run_id}").json()["step"] == MAX_INT


def test_nan_and_infinity_in_any_body_are_a_422_not_a_500(client, running) -> None:
    run_id, attempt = running
    evaluation = {
        "attempt": attempt,
        "step": 10,
        "kind": "quick",
        "score_mean": 1.0,
        "score_std": 0.0,
        "returns": [float("nan")],
        "scores": [1.0],
        "n_envs": 1,
        "n_episodes": 1,
    }
    assert _fields(_raw(client, f"/api/runs/{run_id}/evaluations", json.dumps(evaluation))) == [["body", "returns", 0]]
    evaluation.update(returns=[1.0], scores=[float("inf")], score_mean=float("-inf"))
    assert sorted(_fields(_raw(client, f"/api/runs/{run_id}/evaluations", json.dumps(evaluation)))) == [
        ["body", "score_mean"],
        ["body", "scores", 0],
    ]
    evaluation.update(scores=[1.0], score_mean=1e308)  # finite, but no score is that big (figures broke on it)
    assert _fields(client.post(f"/api/runs/{run_id}/evaluations", json=evaluation)) == [["body", "score_mean"]]
    assert client.get(f"/api/runs/{run_id}").json()["evaluations"] == []
    beat = _raw(
        client,
        f"/api/runs/{run_id}/heartbeat",
        json.dumps({"attempt": attempt, "step": 1, "steps_per_s": float("nan")}),
    )
    assert _fields(beat) == [["body", "steps_per_s"]]
    # a NaN where a string belongs, and in the config, is refused without echoing it
    assert _fields(_raw(client, "/api/runs", '{"task": NaN}')) == [["body", "task"]]
    bad = _raw(client, "/api/runs", '{"task": "hopper-medium-v2", "config": {"temperature": NaN}}')
    assert _fields(bad) == [["body", "config", "temperature"]]
    assert "input" not in bad.json()["detail"][0]


def test_names_free_text_and_bodies_are_bounded(client, running, settings) -> None:
    run_id, attempt = running
    assert _fields(client.post("/api/runs", json={"task": "hopper-medium-v2", "name": "x" * 201})) == [["body", "name"]]
    assert _fields(client.post(f"/api/runs/{run_id}/events", json={"attempt": attempt, "message": "x" * 20_001})) == [
        ["body", "message"]
    ]
    assert _fields(
        client.post(f"/api/runs/{run_id}/finish", json={"attempt": attempt, "status": "failed", "error": "x" * 20_001})
    ) == [["body", "error"]]
    assert _fields(client.post("/api/workers/register", json={"name": "w" * 201})) == [["body", "name"]]
    with TestClient(
        create_app(settings.with_(max_body_bytes=1000)), headers={"Authorization": f"Bearer {settings.token}"}
    ) as small:
        big = small.post(f"/api/runs/{run_id}/events", json={"attempt": attempt, "message": "x" * 2000})
        assert big.status_code == 413
        assert small.post(f"/api/runs/{run_id}/events", json={"attempt": attempt, "message": "ok"}).status_code == 200


def test_every_bad_setting_is_listed_in_one_422(client) -> None:
    r = client.post(
        "/api/runs",
        json={
            "task": "hopper-medium-v2",
            "config": {
                "batch_size": 10**12,
                "d_model": 2**40,
                "horizons": [2, 10**30],
                "diffusion_lr": 1e308,
                "eval_every": 1500,
                "no_such_key": 1,
            },
        },
    )
    assert sorted(_fields(r)) == sorted(
        ["body", "config", k]
        for k in ("batch_size", "d_model", "horizons", "diffusion_lr", "eval_every", "no_such_key")
    )
    messages = {e["loc"][-1]: e["msg"] for e in r.json()["detail"]}
    assert messages["batch_size"] == "must be <= 65,536, got 1000000000000"
    assert messages["eval_every"] == "must be a multiple of log_interval (1000)"
    assert client.get("/api/runs").json() == []


def test_unknown_page_addresses_get_the_styled_not_found_page(client) -> None:
    for path in ("/runs/abc", f"/runs/{HUGE}", "/no/such/page"):
        r = client.get(path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), path
        assert "<h1>Not found</h1>" in r.text and "Back to all runs" in r.text
    # the API and scripts keep getting JSON
    api = client.get("/api/no-such-thing", headers={"accept": "text/html"})
    assert api.status_code == 404 and api.json() == {"detail": "Not Found"}


def test_the_openapi_document_declares_the_real_responses(client) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    for path, operations in paths.items():
        for method, op in operations.items():
            codes = set(op["responses"])
            if path.startswith("/api/"):
                assert {"401", "413"} <= codes, (method, path)
            if "{run_id}" in path:
                assert "404" in codes, (method, path)
            if path.startswith("/api/runs/{run_id}/") and method == "post" and "attempt" in str(op):
                assert "409" in codes, (method, path)
    media = {
        (m, p): set(c for r in op["responses"].values() for c in r.get("content", {}))
        for p, ops in paths.items()
        for m, op in ops.items()
    }
    assert media[("get", "/api/results.md")] >= {"text/markdown"}
    assert media[("get", "/api/runs/{run_id}/figures/{name}")] >= {"image/png"}
    assert media[("get", "/api/runs/stream")] >= {"text/event-stream"}
    assert list(paths["/runs/{run_id}"]["get"]["responses"]["404"]["content"]) == ["text/html"]
    assert "303" in paths["/login"]["post"]["responses"] and "429" in paths["/login"]["post"]["responses"]
    # a method the path does not take names all the ones it does
    assert client.request("OPTIONS", "/api/runs").headers["allow"] == "GET, POST"
