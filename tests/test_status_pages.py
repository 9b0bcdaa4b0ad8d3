"""What the status parts of the pages compute: a sweep's ETA from its runs' own projections,
a run whose worker went silent in the run list and in the panels the run page re-fetches,
a failed checklist item and the missing duration of a run that never trained, the backup
labels, and the sweep form's choices for settings with fixed ones."""

from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient

from app.models import Run
from tests.app_helpers import app_of, claim_run, create_run, register, small_config
from tests.test_device_check_app import REPORT

SMALL = small_config()  # 1000 steps a run, REPORT's projection: 0.6 s a step, 20 s quick and 40 s final evaluations


def _sweep(client: TestClient, seeds: list[int], **body: object) -> dict:
    r = client.post(
        "/api/sweeps",
        json={"tasks": ["hopper-medium-v2"], "seeds": seeds, "variants": ["R1"], "config": SMALL, **body},
    )
    assert r.status_code == 201, r.text
    return r.json()


def _eta_text(browser_client: TestClient, rid: int) -> str:
    return browser_client.get(f"/runs/{rid}/panels").text.split("· ETA ")[1].split("<")[0]


def test_a_sweeps_eta_is_its_runs_projections_spread_over_its_workers(client, browser_client) -> None:
    s = _sweep(client, [0, 1, 2])
    running = []
    for name, step, speed in (("a", 400, 10.0), ("b", 100, 30.0)):
        got = claim_run(client, register(client, name))
        client.post(
            f"/api/runs/{got['run_id']}/device-check", json={"attempt": got["attempt"], **REPORT}
        ).raise_for_status()
        client.post(
            f"/api/runs/{got['run_id']}/heartbeat", json={"attempt": got["attempt"], "step": step, "steps_per_s": speed}
        ).raise_for_status()
        running.append(got["run_id"])
    # each run page: training left at its speed, the quick evaluations still ahead, the final one
    a, b = 600 / 10 + 20 * 0.6 + 40, 900 / 30 + 20 * 0.9 + 40
    assert [_eta_text(browser_client, rid) for rid in running] == ["1m 52s", "1m 28s"]
    # the queued run whole at the mean speed (20 steps/s) with its siblings' check: 50 s + 20 s + 40 s
    queued = 1000 / 20 + 20 + 40
    progress = client.get(f"/api/sweeps/{s['id']}").json()["progress"]
    # the workers' shares of their 40 steps/s: a quarter, three quarters, and half (an average worker)
    assert progress["eta_s"] == pytest.approx(a * 10 / 40 + b * 30 / 40 + queued * 20 / 40)
    page = browser_client.get(f"/sweeps/{s['id']}").text
    caption = " ".join(page.split('id="sweep-eta">')[1].split("</small>")[0].split())
    assert "ETA 2m 29s" in page and "training steps only" not in page
    assert "3 unfinished runs" in caption and "training, evaluations and R2's reflow" in caption
    assert "40.0 steps/s its workers measure together" in caption
    listing = browser_client.get("/sweeps").text
    assert '<td data-label="ETA" class="num">2m 29s</td>' in listing
    assert "training, evaluations, R2's reflow" in " ".join(listing.split('id="sweeps-eta"')[1].split())


def test_equal_workers_divide_the_sweeps_time_left_and_nothing_measured_is_no_eta(client, browser_client) -> None:
    s = _sweep(client, [0, 1, 2])
    page = browser_client.get(f"/sweeps/{s['id']}").text
    assert client.get(f"/api/sweeps/{s['id']}").json()["progress"]["eta_s"] is None
    assert "ETA – " in page and "none yet: no run of it has measured its speed" in page
    for name in ("a", "b"):
        got = claim_run(client, register(client, name))
        client.post(
            f"/api/runs/{got['run_id']}/heartbeat", json={"attempt": got["attempt"], "step": 0, "steps_per_s": 10.0}
        ).raise_for_status()
    # no device check: training only, 100 s each, three runs over two workers
    assert client.get(f"/api/sweeps/{s['id']}").json()["progress"]["eta_s"] == pytest.approx(300 / 2)


def _lose_the_worker(client: TestClient, rid: int, lease_seconds: float) -> None:
    """The run's last heartbeat was 0.8 leases ago: past two missed ones, the lease not yet out."""
    with app_of(client).state.db.write() as session:
        run = session.get(Run, rid)
        assert run is not None
        run.lease_expires_at = time.time() + lease_seconds * 0.2
        session.add(run)


def test_the_run_list_says_worker_lost_and_gives_no_eta(client, browser_client, settings) -> None:
    rid = create_run(client)["id"]
    got = claim_run(client, register(client))
    client.post(f"/api/runs/{rid}/heartbeat", json={"attempt": got["attempt"], "step": 100, "steps_per_s": 5.0})
    row = lambda: browser_client.get("/").text.split(f'data-run-id="{rid}"')[1].split("</tr>")[0]  # noqa: E731
    assert "icon-play" in row() and '<td data-label="ETA" class="num">3m 00s</td>' in row()
    _lose_the_worker(client, rid, settings.lease_seconds)
    lost = row()
    assert "worker lost" in lost and "icon-warning" in lost and "> running<" not in lost
    assert '<td data-label="ETA" class="num">–</td>' in lost and '<td data-label="steps/s" class="num">–</td>' in lost
    assert "worker lost" in browser_client.get("/runs/table").text


def test_the_panels_the_run_page_refetches_say_worker_lost_and_keep_ticking(client, browser_client, settings) -> None:
    rid = create_run(client)["id"]
    claim_run(client, register(client))
    panels = browser_client.get(f"/runs/{rid}/panels").text
    assert "data-ticking" in panels and "worker lost" not in panels
    _lose_the_worker(client, rid, settings.lease_seconds)
    panels = browser_client.get(f"/runs/{rid}/panels").text
    state = panels.split('id="run-state">')[1].split("</p>")[0]
    assert "worker lost" in state and "icon-warning" in state and "status-lost" in state
    assert "data-ticking" in panels, "the lease still runs out: the page keeps re-fetching"
    client.post(f"/api/runs/{rid}/cancel").raise_for_status()
    assert "data-ticking" in browser_client.get(f"/runs/{rid}/panels").text, "asked to stop, still running"


def test_a_failed_item_shows_a_cross_and_a_run_that_never_trained_no_duration(client, browser_client) -> None:
    rid = create_run(client)["id"]
    got = claim_run(client, register(client))
    a = {"attempt": got["attempt"]}
    client.post(f"/api/runs/{rid}/stage", json={**a, "stage": "data"}).raise_for_status()
    client.post(
        f"/api/runs/{rid}/checklist", json={**a, "key": "data.ready", "failed": True, "detail": "download it first"}
    ).raise_for_status()
    assert "elapsed <span" in browser_client.get(f"/runs/{rid}").text, "a running run's clock runs in any stage"
    client.post(f"/api/runs/{rid}/finish", json={**a, "status": "failed", "error": "no dataset"}).raise_for_status()
    page = browser_client.get(f"/runs/{rid}").text
    item = page.split('<li class="failed" data-key="data.ready">')[1].split("</li>")[0]
    assert "icon-cross" in item and "failed:" in item and "download it first" in item and "☒" not in page
    facts = page.split('id="run-facts"')[1].split("</p>")[0]
    assert "took" not in facts and "elapsed" not in facts and "finished" in page

    never = create_run(client)["id"]
    client.post(f"/api/runs/{never}/cancel").raise_for_status()
    assert "took" not in browser_client.get(f"/runs/{never}").text.split('id="run-facts"')[1].split("</p>")[0]

    trained = create_run(client)["id"]
    got = claim_run(client, register(client, "b"))
    a = {"attempt": got["attempt"]}
    client.post(f"/api/runs/{trained}/stage", json={**a, "stage": "train"}).raise_for_status()
    client.post(f"/api/runs/{trained}/finish", json={**a, "status": "failed", "error": "nan"}).raise_for_status()
    assert "took <span" in browser_client.get(f"/runs/{trained}").text


def test_backup_labels_say_where_a_backup_is_and_when_retention_replaced_it(client, browser_client) -> None:
    rid = create_run(client, keep_every=1000)["id"]
    got = claim_run(client, register(client))
    hub = "https://huggingface.co/u/r/resolve/main/runs/x/checkpoints/ckpt_{:08d}.pt"
    for step, fields in (
        (400, {"backup_state": "hub", "hub_url": hub.format(400)}),
        (500, {"backup_state": "hub", "hub_url": "file:///content/drive/dl/runs/x/checkpoints/ckpt_00000500.pt"}),
        (600, {"backup_state": "hub"}),
        (700, {"backup_state": "local"}),
        (1000, {"backup_state": "hub", "hub_url": hub.format(1000)}),
        (1200, {"backup_state": "hub", "hub_url": hub.format(1200)}),
    ):
        body = {"attempt": got["attempt"], "step": step, "size": 1, "sha256": "a" * 64, **fields}
        client.post(f"/api/runs/{rid}/checkpoints", json=body).raise_for_status()
    page = browser_client.get(f"/runs/{rid}").text
    cell = lambda step: page.split(f'<tr data-step="{step}">')[1].split("</tr>")[0]  # noqa: E731
    for step in (400, 500, 600):  # a later backup (1,200) dropped them: not multiples of keep_every
        assert "replaced in the backup by step 1,200" in cell(step), step
        assert "from the Hub" not in cell(step) and "on the Hub" not in cell(step), step
    assert "icon-cloud" in cell(1000) and "on the Hub" in cell(1000), "a multiple of keep_every stays"
    assert "on the Hub" in cell(1200) and "from the Hub" in cell(1200), "the newest stays"
    assert "local only" in cell(700) and "icon-box" in cell(700)

    folder = create_run(client, backup_dir="/content/drive/dl", keep_every=100)["id"]
    got = claim_run(client, register(client, "b"))
    for step, fields in ((500, {"hub_url": "file:///content/drive/dl/ckpt_00000500.pt"}), (600, {})):
        body = {"attempt": got["attempt"], "step": step, "size": 1, "sha256": "a" * 64, "backup_state": "hub"}
        client.post(f"/api/runs/{folder}/checkpoints", json={**body, **fields}).raise_for_status()
    page = browser_client.get(f"/runs/{folder}").text
    assert "icon-folder" in cell(500) and "in the backup folder" in cell(500), "a file:// URL: the backup_dir"
    assert "backed up" in cell(600) and "on the Hub" not in cell(600), "no URL: backed up, place unknown"


def test_the_sweep_form_offers_a_fixed_choice_settings_choices(browser_client) -> None:
    page = browser_client.get("/sweeps").text
    form = page.split('id="sweep-form"')[1]
    overrides = re.findall(r'<select class="value" data-setting="block"[^>]*hidden>(.*?)</select>', form, re.S)
    assert len(overrides) == 4, "one per override row"
    assert '<option value="reference" selected>reference (default)</option>' in overrides[0]
    assert '<option value="dit">dit</option>' in overrides[0]
    assert 'data-setting="plan_accel"' in form and 'data-setting="task"' not in form
    ablation = form.split('<fieldset class="value choices" data-setting="on_nonfinite" hidden>')[1].split(
        "</fieldset>"
    )[0]
    assert '<input type="checkbox" value="stop"> stop (default)' in ablation and 'value="continue"' in ablation
    assert '<fieldset class="value choices" data-setting="train_accel"' not in form, "not an ablation setting"
