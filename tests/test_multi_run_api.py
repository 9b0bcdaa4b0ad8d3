"""Sweeps, results over seeds, comparing runs, chart data as CSV/JSON and the runs list
for hundreds of runs, through the API on SQLite and on PostgreSQL (DLITE_TEST_POSTGRES_URL)."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.protocol import RESUMED, resumed_from
from dlite.tasks import PAPER_PLANNING_HZ, REFERENCE_CURVES, TASKS
from tests.app_helpers import claim_run, make_settings, register, small_config

SMALL = small_config()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    settings = make_settings(tmp_path, **({"database_url": url} if url else {}))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {settings.token}"}) as c:
        yield c


def sweep(
    c: TestClient,
    tasks: list[str],
    seeds: list[int],
    variants: Sequence[str] = ("R1",),
    name: str | None = None,
    base: dict = SMALL,
    **config: object,
) -> dict:
    """Queue a sweep of `base` settings (small ones; `{}` for the paper's) with `config` changes."""
    r = c.post(
        "/api/sweeps",
        json={"name": name, "tasks": tasks, "seeds": seeds, "variants": variants, "config": {**base, **config}},
    )
    assert r.status_code == 201, r.text
    return r.json()


def run_next(c: TestClient, wid: str) -> tuple[int, int]:
    got = claim_run(c, wid)
    return got["run_id"], got["attempt"]


def final(
    c: TestClient,
    rid: int,
    attempt: int,
    scores: list[float],
    variant: str = "R1",
    latency_ms: float | None = None,
    latency_ms_1env: float | None = None,
    n_envs: int = 2,
    device: str | None = None,
    kind: str = "final",
    step: int = 1000,
) -> None:
    r = c.post(
        f"/api/runs/{rid}/evaluations",
        json={
            "attempt": attempt,
            "step": step,
            "kind": kind,
            "variant": variant,
            "score_mean": statistics.fmean(scores),
            "score_std": statistics.pstdev(scores),
            "returns": [s * 10 for s in scores],
            "scores": scores,
            "n_envs": n_envs,
            "n_episodes": len(scores),
            "latency_ms": latency_ms,
            "latency_ms_1env": latency_ms_1env,
            "device": device,
        },
    )
    assert r.status_code == 200, r.text


def finish(c: TestClient, rid: int, attempt: int) -> None:
    assert c.post(f"/api/runs/{rid}/finish", json={"attempt": attempt, "status": "succeeded"}).status_code == 200


def test_a_sweep_queues_one_named_run_per_task_variant_and_seed(api) -> None:
    s = sweep(api, ["hopper-medium-v2", "walker2d-medium-v2"], [0, 1, 2], ["R1", "R2"], name="paper")
    names = [r["name"] for r in s["runs"]]
    assert len(names) == 12 == s["progress"]["total"] == s["progress"]["queued"]
    assert "paper/walker2d-medium-v2/R2/seed1" in names and len(set(names)) == 12
    for r in s["runs"]:
        detail = api.get(f"/api/runs/{r['id']}").json()
        _, task, variant, seed = r["name"].split("/")
        assert (detail["task"], detail["config"]["variant"], f"seed{detail['config']['seed']}") == (task, variant, seed)
        assert detail["config"]["diffusion_gradient_steps"] == SMALL["diffusion_gradient_steps"]
        assert detail["sweep_id"] == s["id"]
    # an unnamed sweep's runs are named by task, variant and seed alone: stable on a fresh machine
    assert [r["name"] for r in sweep(api, ["hopper-medium-v2"], [7])["runs"]] == ["hopper-medium-v2/R1/seed7"]
    listed = api.get("/api/runs", params={"sweep": s["id"], "limit": 5})
    assert listed.headers["x-total-count"] == "12" and len(listed.json()) == 5


def test_the_same_sweep_on_a_fresh_server_names_its_runs_the_same(client, tmp_path) -> None:
    """A run's name is its backup folder: a new Colab VM queuing the sweep again must find the backups."""
    first = sweep(client, ["hopper-medium-v2", "walker2d-medium-v2"], [0, 1], ["R1", "R2"], name="paper")
    client.post("/api/runs", json={"task": "hopper-medium-v2", "config": SMALL}).raise_for_status()  # ids shift
    fresh = make_settings(tmp_path / "fresh")
    fresh.data_dir.mkdir()
    with TestClient(create_app(fresh), headers={"Authorization": f"Bearer {fresh.token}"}) as other:
        other.post("/api/runs", json={"task": "walker2d-medium-v2", "config": SMALL}).raise_for_status()
        again = sweep(other, ["hopper-medium-v2", "walker2d-medium-v2"], [0, 1], ["R1", "R2"], name="paper")
    assert [r["name"] for r in again["runs"]] == [r["name"] for r in first["runs"]]
    assert [r["id"] for r in again["runs"]] != [r["id"] for r in first["runs"]]


def test_sweep_progress_and_eta_come_from_measured_speed(api) -> None:
    s = sweep(api, ["hopper-medium-v2"], [0, 1, 2])
    wid = register(api)
    a_id, a_att = run_next(api, wid)
    b_id, b_att = run_next(api, wid)
    for rid, att, step, speed in ((a_id, a_att, 400, 10.0), (b_id, b_att, 100, 30.0)):
        assert (
            api.post(
                f"/api/runs/{rid}/heartbeat", json={"attempt": att, "step": step, "steps_per_s": speed}
            ).status_code
            == 200
        )
    p = api.get(f"/api/sweeps/{s['id']}").json()["progress"]
    total = SMALL["diffusion_gradient_steps"]
    assert isinstance(total, int)
    left = (total - 400) + (total - 100) + total
    assert (p["running"], p["queued"], p["done"], p["steps_left"]) == (2, 1, 0, left)
    assert p["steps_per_s"] == pytest.approx(20.0)
    assert p["eta_s"] == pytest.approx(left / (20.0 * 2))
    assert api.get("/api/sweeps").json()[0]["progress"] == p


def test_cancelling_a_sweep_stops_what_has_not_ended(api) -> None:
    s = sweep(api, ["hopper-medium-v2"], [0, 1, 2])
    wid = register(api)
    done_id, done_att = run_next(api, wid)
    finish(api, done_id, done_att)
    running_id, running_att = run_next(api, wid)
    out = api.post(f"/api/sweeps/{s['id']}/cancel").json()
    queued_id = next(r["id"] for r in s["runs"] if r["id"] not in (done_id, running_id))
    assert out == {"cancelled": [queued_id], "asked_to_stop": [running_id]}
    hb = api.post(f"/api/runs/{running_id}/heartbeat", json={"attempt": running_att, "step": 5}).json()
    assert [c["kind"] for c in hb["commands"]] == ["cancel"]
    statuses = {r["id"]: r["status"] for r in api.get(f"/api/sweeps/{s['id']}").json()["runs"]}
    assert statuses == {done_id: "succeeded", running_id: "running", queued_id: "cancelled"}
    assert api.get(f"/api/sweeps/{s['id']}").json()["cancelled_at"] is not None
    progress = api.get(f"/api/sweeps/{s['id']}").json()["progress"]
    assert (progress["succeeded"], progress["done"], progress["total"]) == (1, 2, 3), "a bar of what finished"
    assert api.post("/api/sweeps/999/cancel").status_code == 404


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"tasks": ["pong-v0"]}, ["body", "tasks"]),
        ({"tasks": []}, ["body", "tasks"]),
        ({"tasks": ["hopper-medium-v2"], "seeds": [-1]}, ["body", "seeds", 0]),
        ({"tasks": ["hopper-medium-v2"], "variants": ["R3"]}, ["body", "variants", 0]),
        ({"tasks": ["hopper-medium-v2"], "name": "a b"}, ["body", "name"]),
        ({"tasks": ["hopper-medium-v2"], "config": {"seed": 3}}, ["body", "config", "seed"]),
        (
            {"tasks": ["hopper-medium-v2", "walker2d-medium-v2"], "config": {"batch_size": 0}},
            ["body", "config", "batch_size"],
        ),
    ],
)
def test_a_bad_sweep_is_a_422_naming_the_field_and_queues_nothing(client, body, loc) -> None:
    r = client.post("/api/sweeps", json=body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == loc and r.json()["detail"][0]["msg"]
    assert client.get("/api/runs").json() == [] and client.get("/api/sweeps").json() == []


def test_a_sweep_name_is_used_once(client) -> None:
    sweep(client, ["hopper-medium-v2"], [0], name="again")
    r = client.post("/api/sweeps", json={"name": "again", "tasks": ["hopper-medium-v2"]})
    assert r.status_code == 409 and "choose another name" in r.json()["detail"]


def _expected(scores: list[float], paper_mean: float, paper_sem: float | None) -> tuple[float, float, float, str]:
    assert paper_sem is not None, "a paper score without a s.e. is not judged"
    mean = statistics.fmean(scores)
    sem = statistics.stdev(scores) / math.sqrt(len(scores))
    diff = mean - paper_mean
    combined = math.sqrt(sem**2 + paper_sem**2)
    verdict = "agrees" if abs(diff) <= combined else "close" if abs(diff) <= 2 * combined else "differs"
    return mean, sem, diff, verdict


def test_results_aggregate_finished_runs_over_seeds_like_the_paper(api) -> None:
    sweep(api, ["hopper-medium-v2"], [0, 1, 2], ["R2"], base={})
    wid = register(api)
    r1_means, r2_means = [[99.0, 101.0], [97.5, 98.5], [100.0, 100.5]], [[90.0, 92.0], [95.0, 96.0], [88.0, 90.0]]
    for r1, r2 in zip(r1_means, r2_means):
        rid, att = run_next(api, wid)
        final(api, rid, att, [50.0], kind="quick", step=500)  # quick evaluations are not results
        final(api, rid, att, r1, "R1", latency_ms=40.0, latency_ms_1env=12.5, n_envs=2, device="cpu")
        final(api, rid, att, r2, "R2", latency_ms=10.0, latency_ms_1env=4.0, n_envs=2, device="cpu")
        finish(api, rid, att)
    other = sweep(api, ["walker2d-medium-v2"], [0], base={})
    rid, att = run_next(api, wid)
    final(api, rid, att, [80.0, 84.0, 82.0])
    api.post("/api/runs", json={"task": "hopper-medium-v2", "config": SMALL, "is_demo": True})
    demo_id, demo_att = run_next(api, wid)
    final(api, demo_id, demo_att, [5.0])  # demo runs never count

    rows = {(r["task"], r["variant"]): r for r in api.get("/api/results").json()["rows"]}
    assert set(rows) == {("hopper-medium-v2", "R1"), ("hopper-medium-v2", "R2"), ("walker2d-medium-v2", "R1")}
    task = TASKS["hopper-medium-v2"]
    for variant, per_run, paper in (("R1", r1_means, task.paper_r1), ("R2", r2_means, task.paper_r2)):
        row = rows[("hopper-medium-v2", variant)]
        mean, sem, diff, verdict = _expected([statistics.fmean(x) for x in per_run], paper.mean, paper.sem)
        assert row["n"] == 3 and row["seeds"] == [0, 1, 2] and row["label"] == "mean ± s.e. over seeds"
        assert row["mean"] == pytest.approx(mean) and row["sem"] == pytest.approx(sem)
        assert row["difference"] == pytest.approx(diff) and row["agreement"]["verdict"] == verdict
        assert row["paper"] == {
            "mean": paper.mean,
            "sem": paper.sem,
            "source": paper.source,
            "label": "mean ± s.e. over 5 seeds",
            "variant": variant,
        }
        assert row["per_episode"] is None and row["differing_config_keys"] == []
        assert row["planning"]["paper_hz"] == PAPER_PLANNING_HZ[variant] and row["planning"]["devices"] == ["cpu"]
    assert rows[("hopper-medium-v2", "R1")]["planning"]["hz_1env"] == pytest.approx(1000 / 12.5)
    assert rows[("hopper-medium-v2", "R2")]["planning"]["decisions_per_s"] == pytest.approx(2 * 1000 / 10.0)

    one = rows[("walker2d-medium-v2", "R1")]
    assert one["n"] == 1 and one["sem"] is None and one["agreement"]["verdict"] == "not judged"
    assert one["per_episode"]["std"] == pytest.approx(statistics.pstdev([80.0, 84.0, 82.0]))
    assert "not a standard error" in one["per_episode"]["label"]

    only = api.get("/api/results", params={"sweep": other["id"]}).json()["rows"]
    assert [(r["task"], r["n"]) for r in only] == [("walker2d-medium-v2", 1)]

    md = api.get("/api/results.md").text
    hopper_r2 = next(line for line in md.splitlines() if line.startswith("| hopper-medium-v2 | R2 |"))
    mean, sem, diff, _ = _expected([statistics.fmean(x) for x in r2_means], task.paper_r2.mean, task.paper_r2.sem)
    assert f"{mean:.1f} ± {sem:.1f} (s.e. over seeds)" in hopper_r2 and f"{diff:+.1f}" in hopper_r2
    assert f"{task.paper_r2.mean:.1f} ± {task.paper_r2.sem:.1f} (s.e. over 5 seeds)" in hopper_r2
    assert f"| {1000 / 4.0:,.1f} |" in hopper_r2
    assert f"| {PAPER_PLANNING_HZ['R2']:,.1f} (not comparable: measured on cpu, not a CUDA GPU" in hopper_r2
    walker = next(line for line in md.splitlines() if line.startswith("| walker2d-medium-v2 | R1 |"))
    assert "(std over 3 episodes, one run)" in walker and "not judged" in walker
    assert task.paper_r1.source in md and "hopper-medium-v2 | R1 | 0, 1, 2 (3)" in md


def test_runs_at_other_settings_are_their_own_row_and_claim_no_agreement(api) -> None:
    task = TASKS["hopper-medium-v2"]
    # one experiment: seeds, quick evaluations, logging, backups and a task-table value spelled out
    sweep(api, ["hopper-medium-v2"], [0], base={})
    sweep(
        api,
        ["hopper-medium-v2"],
        [1],
        base={},
        eval_every=500,
        log_interval=10,
        backup_every=0,
        target_return=task.target_return_r1,
        train_accel="eager",
    )
    small = sweep(
        api,
        ["hopper-medium-v2"],
        [0, 1],
        base={},
        d_model=64,
        diffusion_gradient_steps=200,
        invdyn_gradient_steps=200,
        eval_every=100,
        log_interval=100,
        save_interval=100,
    )
    wid = register(api)
    for scores in ([99.0, 101.0], [97.0, 99.0], [50.0, 52.0], [60.0, 62.0]):
        rid, att = run_next(api, wid)
        final(api, rid, att, scores, latency_ms=10.0, latency_ms_1env=5.0, n_envs=50, device="cuda")
        finish(api, rid, att)

    paper_row, other_row = api.get("/api/results").json()["rows"]
    assert (paper_row["n"], paper_row["seeds"], paper_row["paper_settings"]) == (2, [0, 1], True)
    assert paper_row["settings_caption"] is None and paper_row["difference"] == pytest.approx(99.0 - task.paper_r1.mean)
    assert paper_row["agreement"]["verdict"] in ("agrees", "close", "differs")
    assert paper_row["planning"]["not_comparable"] is None
    assert other_row["run_ids"] == [r["id"] for r in small["runs"]] and other_row["paper_settings"] is False
    caption = (
        "not the paper's settings: d_model 64 (paper 256), diffusion_gradient_steps 200 (paper 1,000,000), "
        "invdyn_gradient_steps 200 (paper 1,000,000)"
    )
    assert other_row["settings_caption"] == caption and other_row["difference"] is None
    assert other_row["agreement"] == {
        "verdict": "not compared",
        "text": f"{caption}; no agreement or difference is claimed",
    }
    assert other_row["planning"]["not_comparable"] == "a different planner from the paper's: d_model 64 (paper 256)"

    md = api.get("/api/results.md").text
    rows = [line for line in md.splitlines() if line.startswith("| hopper-medium-v2 | R1 |")]
    assert len(rows) == 2 and caption in rows[1] and "| – |" in rows[1] and "not comparable: " in rows[1]
    assert "not the paper" not in rows[0] and f"{99.0 - task.paper_r1.mean:+.1f}" in rows[0]

    browser = TestClient(api.app, follow_redirects=False)
    token = api.headers["Authorization"].split()[1]
    assert browser.post("/login", data={"token": token, "next": "/"}).status_code == 303
    page = browser.get("/results").text
    assert page.count('data-paper-settings="no"') == 1 and page.count('data-paper-settings="yes"') == 1
    assert "d_model 64 (paper 256)" in page and "verdict-not-compared" in page
    run_page = browser.get(f"/runs/{small['runs'][0]['id']}").text
    assert "none: not the paper&#39;s settings: d_model 64 (paper 256)" in run_page
    assert "not comparable: a different planner from the paper&#39;s: d_model 64" in run_page
    listing = browser.get("/").text
    assert listing.count(">other settings</span>") == 2


def test_a_speed_is_set_beside_the_papers_only_from_a_cuda_gpu(api) -> None:
    """At the paper's settings, a CPU's planning frequency is named beside the paper's Hz; a
    CUDA GPU's is not, whatever the batch: the frequency compared is one environment's."""
    sweep(api, ["hopper-medium-v2", "walker2d-medium-v2"], [0], base={})
    sweep(api, ["halfcheetah-medium-v2"], [0], base={}, num_envs=10)
    wid = register(api)
    ran = []
    for device, n_envs in (("cpu", 50), ("cuda:0", 50), ("cuda:0", 10)):
        rid, att = run_next(api, wid)
        ran.append(rid)
        final(api, rid, att, [50.0, 52.0], latency_ms=30.0, latency_ms_1env=12.5, n_envs=n_envs, device=device)
        finish(api, rid, att)

    rows = {r["task"]: r for r in api.get("/api/results").json()["rows"]}
    cpu, gpu, small_batch = (
        rows[t]["planning"] for t in ("hopper-medium-v2", "walker2d-medium-v2", "halfcheetah-medium-v2")
    )
    cpu_caption = "measured on cpu, not a CUDA GPU (the paper does not state its hardware)"
    assert rows["hopper-medium-v2"]["paper_settings"] and cpu["devices"] == ["cpu"]
    assert cpu["not_comparable"] == cpu_caption and cpu["hz_1env"] == pytest.approx(80.0)
    assert rows["walker2d-medium-v2"]["paper_settings"] and gpu["devices"] == ["cuda:0"]
    assert gpu["not_comparable"] is None, "the paper's planner on a CUDA GPU over the paper's batch"
    assert small_batch["n_envs"] == [10]
    assert small_batch["not_comparable"] is None and small_batch["hz_1env"] == pytest.approx(80.0)

    md = {line.split(" | ")[0]: line for line in api.get("/api/results.md").text.splitlines() if " | R1 | " in line}
    assert f"(not comparable: {cpu_caption})" in md["| hopper-medium-v2"]
    assert "not comparable" not in md["| walker2d-medium-v2"]
    browser = TestClient(api.app, follow_redirects=False)
    assert (
        browser.post("/login", data={"token": api.headers["Authorization"].split()[1], "next": "/"}).status_code == 303
    )
    page = browser.get("/results").text
    assert page.count(f"not comparable: {cpu_caption}") == 1 and page.count("not comparable: ") == 1
    run_pages = [browser.get(f"/runs/{rid}").text for rid in ran]
    assert [p.count(f"not comparable: {cpu_caption}") for p in run_pages] == [1, 0, 0], "the run page says it too"


def test_runs_list_pages_filters_and_sorts(api) -> None:
    ids = [
        api.post("/api/runs", json={"task": t, "name": f"run-{i}", "config": SMALL}).json()["id"]
        for i, t in enumerate(["hopper-medium-v2", "walker2d-medium-v2"] * 4)
    ]
    page = api.get("/api/runs", params={"limit": 3, "offset": 3})
    assert page.headers["x-total-count"] == "8" and [r["id"] for r in page.json()] == ids[::-1][3:6]
    hopper = api.get("/api/runs", params={"task": "hopper-medium-v2"})
    assert hopper.headers["x-total-count"] == "4" and {r["task"] for r in hopper.json()} == {"hopper-medium-v2"}
    assert [r["id"] for r in api.get("/api/runs", params={"sort": "oldest"}).json()] == ids
    assert [r["name"] for r in api.get("/api/runs", params={"sort": "name"}).json()] == sorted(
        f"run-{i}" for i in range(8)
    )
    rid, att = run_next(api, register(api))
    assert [r["id"] for r in api.get("/api/runs", params={"status": "running"}).json()] == [rid]
    api.patch(f"/api/runs/{ids[1]}", json={"tags": ["baseline", "lr"]}).raise_for_status()
    api.patch(f"/api/runs/{ids[2]}", json={"archived": True}).raise_for_status()
    assert [r["id"] for r in api.get("/api/runs", params={"tag": "lr"}).json()] == [ids[1]]
    assert ids[2] not in [r["id"] for r in api.get("/api/runs").json()]
    assert api.get("/api/runs").headers["x-total-count"] == "7"
    assert [r["id"] for r in api.get("/api/runs", params={"archived": "only"}).json()] == [ids[2]]
    assert api.get("/api/runs", params={"archived": "include"}).headers["x-total-count"] == "8"
    assert api.get("/api/runs", params={"sort": "best"}).status_code == 422
    assert api.get("/api/runs", params={"limit": 0}).status_code == 422


def test_a_run_is_created_with_tags_bounded_as_patch_bounds_them(api) -> None:
    run = api.post("/api/runs", json={"task": "hopper-medium-v2", "config": SMALL, "tags": [" a ", "b", "a", ""]})
    assert run.status_code == 201 and run.json()["tags"] == ["a", "b"]
    assert api.get("/api/runs", params={"tag": "b"}).json()[0]["id"] == run.json()["id"]
    assert api.post("/api/runs", json={"task": "hopper-medium-v2", "config": SMALL}).json()["tags"] == []
    for bad in (["a,b"], ["x" * 41], [str(i) for i in range(21)], "a", [1]):
        r = api.post("/api/runs", json={"task": "hopper-medium-v2", "config": SMALL, "tags": bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "tags"], bad
        assert api.patch(f"/api/runs/{run.json()['id']}", json={"tags": bad}).status_code == 422, bad
    assert len(api.get("/api/runs").json()) == 2


def test_tags_note_archive_and_delete(api) -> None:
    busy = api.post("/api/runs", json={"task": "hopper-medium-v2", "config": SMALL}).json()["id"]
    rid = api.post("/api/runs", json={"task": "hopper-medium-v2", "config": SMALL}).json()["id"]
    got = api.patch(f"/api/runs/{rid}", json={"tags": [" a ", "b", "a"], "note": "  try lr 1e-4  "}).json()
    assert (got["tags"], got["note"], got["archived"]) == (["a", "b"], "try lr 1e-4", False)
    assert api.patch(f"/api/runs/{rid}", json={"archived": True}).json()["tags"] == ["a", "b"]  # only what was sent
    assert api.patch(f"/api/runs/{rid}", json={"tags": None, "note": None}).json()["note"] == "try lr 1e-4"
    assert api.patch(f"/api/runs/{rid}", json={"tags": ["a,b"]}).status_code == 422
    assert api.patch(f"/api/runs/{rid}", json={"color": "red"}).status_code == 422
    assert api.patch("/api/runs/999", json={"note": "x"}).status_code == 404

    running, att = run_next(api, register(api))
    assert running == busy
    r = api.delete(f"/api/runs/{running}")
    assert r.status_code == 409 and "cancel it first" in r.json()["detail"]

    data_dir = api.app.state.settings.data_dir
    uuid = api.get(f"/api/runs/{rid}").json()["uuid"]
    figures, work = data_dir / "results" / str(rid), data_dir / "worker" / "runs" / uuid
    for folder in (figures, work):
        folder.mkdir(parents=True)
        (folder / "file").write_text("x")
    other = data_dir / "results" / str(running)
    other.mkdir(parents=True)
    out = api.delete(f"/api/runs/{rid}").json()
    assert out["deleted"] == rid and sorted(out["removed_paths"]) == sorted([str(figures), str(work)])
    assert not figures.exists() and not work.exists() and other.exists()
    assert api.get(f"/api/runs/{rid}").status_code == 404
    assert rid not in [r["id"] for r in api.get("/api/runs", params={"archived": "include"}).json()]


def _two_runs_with_data(api: TestClient) -> tuple[int, int]:
    a = api.post(
        "/api/runs", json={"task": "halfcheetah-medium-expert-v2", "name": "a", "config": {**SMALL, "seed": 1}}
    ).json()["id"]
    b = api.post(
        "/api/runs",
        json={"task": "halfcheetah-medium-expert-v2", "name": "b", "config": {**SMALL, "seed": 2, "batch_size": 64}},
    ).json()["id"]
    wid = register(api)
    for rid in (a, b):
        got_id, att = run_next(api, wid)
        assert got_id == rid
        points = [
            {"key": k, "step": s, "value": (rid + s) / 100, "wall_time": 1000.0 + s}
            for k in ("loss0", "loss1", "invdyn_loss")
            for s in range(0, 50, 10)
        ]
        points.append({"key": "loss0", "step": 60, "value": None, "nonfinite": "nan", "wall_time": 1060.0})
        assert api.post(f"/api/runs/{rid}/metrics", json={"attempt": att, "points": points}).status_code == 200
        final(api, rid, att, [10.0, 12.0], kind="quick", step=20)
        final(api, rid, att, [80.0, 90.0])
    return a, b


def test_compare_and_chart_data_as_csv_and_json(api) -> None:
    a, b = _two_runs_with_data(api)
    data = api.get("/api/compare", params={"runs": f"{a},{b}"}).json()
    assert [r["id"] for r in data["runs"]] == [a, b]
    assert {d["key"]: d["values"] for d in data["config_diff"]} == {"seed": [1, 2], "batch_size": [256, 64]}

    csv_text = api.get("/api/compare/charts/loss.csv", params={"runs": f"{a},{b}"})
    assert csv_text.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv_text.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(csv_text.text)))
    assert {(int(r["run_id"]), r["key"]) for r in rows} == {(a, "loss0"), (a, "loss1"), (b, "loss0"), (b, "loss1")}
    first = next(r for r in rows if int(r["run_id"]) == b and r["key"] == "loss1" and r["step"] == "10")
    assert float(first["value"]) == pytest.approx((b + 10) / 100)
    as_json = api.get("/api/compare/charts/loss.json", params={"runs": f"{a},{b}"}).json()
    assert as_json["columns"] == list(rows[0]) and len(as_json["rows"]) == len(rows) == 2 * 2 * 5
    assert data["charts"]["loss"]["rows"] == as_json["rows"]

    score = list(csv.DictReader(io.StringIO(api.get(f"/api/runs/{a}/charts/score.csv").text)))
    mine = [
        (r["kind"], r["variant"], r["step"], float(r["score_mean"]), float(r["score_std"]))
        for r in score
        if r["run_id"]
    ]
    assert mine == [("quick", "R1", "20", 11.0, 1.0), ("final", "R1", "1000", 85.0, 5.0)]
    curve = REFERENCE_CURVES["halfcheetah-medium-expert-v2"]
    reference = [(int(r["step"]), float(r["score_mean"])) for r in score if r["kind"] == "reference"]
    assert reference == list(zip(curve.steps, curve.scores))
    assert {r["source"] for r in score if r["kind"] == "reference"} == {curve.source}

    history = list(csv.reader(io.StringIO(api.get(f"/api/runs/{a}/metrics.csv").text)))
    assert history[0] == ["key", "step", "value", "wall_time"]
    assert len(history) - 1 == 3 * 5 + 1  # three series of five points, and the NaN
    assert ["loss0", "60", "nan", "1060.0"] in history
    assert [r[:2] for r in history[1:]] == sorted((r[:2] for r in history[1:]), key=lambda k: (k[0], int(k[1])))

    assert api.get("/api/compare/charts/nope.csv", params={"runs": str(a)}).status_code == 404
    assert api.get("/api/compare", params={"runs": f"{a},999"}).status_code == 404
    bad = api.get("/api/compare", params={"runs": "1,x"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "runs"]
    assert api.get("/api/compare", params={"runs": ",".join(str(i) for i in range(1, 14))}).status_code == 422
    assert api.get(f"/api/runs/{a}/charts/loss.xml").status_code == 422
    json.dumps(data)  # the whole comparison is plain JSON


def test_compare_groups_the_runs_that_differ_only_by_seed(api) -> None:
    """Seeds, names and backup settings may differ within a group (paper_settings.fingerprint,
    the results table's rule); any other setting, or the task, makes another group."""
    seeds = [r["id"] for r in sweep(api, ["hopper-medium-v2"], [0, 1, 2])["runs"]]
    backed_up = api.post(
        "/api/runs",
        json={"task": "hopper-medium-v2", "name": "mine", "config": {**SMALL, "seed": 5, "hub_repo": "user/results"}},
    ).json()["id"]
    other_lr = api.post(
        "/api/runs", json={"task": "hopper-medium-v2", "name": None, "config": {**SMALL, "seed": 0, "batch_size": 64}}
    ).json()["id"]
    other_task = sweep(api, ["walker2d-medium-v2"], [0])["runs"][0]["id"]
    ids = [*seeds, backed_up, other_lr, other_task]
    data = api.get("/api/compare", params={"runs": ",".join(map(str, ids))}).json()
    groups = data["groups"]
    assert [g["run_ids"] for g in groups] == [[*seeds, backed_up], [other_lr], [other_task]]
    assert [g["seeds"] for g in groups] == [[0, 1, 2, 5], [0], [0]]
    assert [r["group"] for r in data["runs"]] == [0, 0, 0, 0, 1, 2]
    labels = [g["label"] for g in groups]
    assert labels[0] == "hopper-medium-v2 R1 · batch_size=256 (4 runs)", labels
    assert labels[1] == "hopper-medium-v2 R1 · batch_size=64 (1 run)"
    assert labels[2].startswith("walker2d-medium-v2 R1") and "seed" not in labels[2]


def test_stage_marks_say_where_reflow_started_and_where_an_attempt_resumed(api) -> None:
    """The reflow mark (at R1's last step, once reflow has logged; its wall time that point's)
    and one mark per resume event the worker writes (app.protocol.resumed_from), not the
    checklist's echo of it; both on the run's charts and in the comparison."""
    rid = api.post(
        "/api/runs",
        json={
            "task": "hopper-medium-v2",
            "name": None,
            "config": {**SMALL, "variant": "R2", "reflow_gradient_steps": 500},
        },
    ).json()["id"]
    wid = register(api)
    _, attempt = run_next(api, wid)
    a = {"attempt": attempt}
    points = [{"key": "loss0", "step": s, "value": 1.0, "wall_time": 1000.0 + s} for s in range(100, 1001, 100)]
    assert api.post(f"/api/runs/{rid}/metrics", json={**a, "points": points}).status_code == 200
    assert api.get(f"/api/runs/{rid}/charts").json()["marks"] == [], "no reflow point yet: no reflow mark"
    how = resumed_from(400, "local checkpoint")
    assert (resumed := RESUMED.match(f"training {how}, to step 1000 on cpu")) and resumed.group(1) == "400"
    for message in (f"training {how}, to step 1000 on cpu", "training started fresh, to step 1000 on cpu"):
        assert api.post(f"/api/runs/{rid}/events", json={**a, "level": "info", "message": message}).status_code == 200
    assert api.post(f"/api/runs/{rid}/checklist", json={**a, "key": "train.start", "detail": how}).status_code == 200
    reflow = [{"key": "loss0", "step": s, "value": 0.01, "wall_time": 5000.0 + s} for s in (1100, 1200)]
    assert api.post(f"/api/runs/{rid}/metrics", json={**a, "points": reflow}).status_code == 200
    marks = api.get(f"/api/runs/{rid}/charts").json()["marks"]
    assert [(m["kind"], m["step"], m["label"]) for m in marks] == [
        ("resume", 400, "resumed from step 400"),
        ("reflow", 1000, "reflow starts"),
    ]
    assert marks[1]["wall_time"] == 6100.0 and isinstance(marks[0]["wall_time"], float)
    compared = api.get("/api/compare", params={"runs": str(rid)}).json()
    assert compared["runs"][0]["marks"] == marks
    assert compared["charts"]["loss"]["y_title"] and compared["charts"]["score"]["y_title"]
