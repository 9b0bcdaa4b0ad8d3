"""The paper's ablations as data, ablation sweeps (queue, refuse bad values, group results by
the varied setting beside the paper's Lite-D numbers) and the charts, exports and figures of
runs with 2 and 4 plan levels; every number here is made up by the test."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.services.dashboard import charts
from app.services.results import agreement
from app.services.sweeps import paper_presets
from dlite.config import from_dict
from dlite.tasks import ABLATION_VARIANT, PAPER_ABLATIONS, TASKS, PaperScore, paper_ablation_score
from tests.app_helpers import claim_run, create_run, register, small_config
from tests.test_root_path import _urls, lab  # noqa: F401  (fixture)

TASK = "halfcheetah-medium-expert-v2"
LEVELS = [[9, 17], [5, 5, 9], [5, 3, 5, 5]]


def _ablation(
    c: TestClient,
    setting: str,
    values: list,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Sequence[str] = ("R1",),
    config: dict | None = None,
    tasks: Sequence[str] = (TASK,),
    name: str | None = "abl",
):
    return c.post(
        "/api/sweeps",
        json={
            "name": name,
            "tasks": tasks,
            "seeds": seeds,
            "variants": variants,
            "config": small_config() if config is None else config,
            "ablation": {"setting": setting, "values": values},
        },
    )


def _paper_score(task: str, setting: str, value: Any) -> PaperScore:
    """paper_ablation_score where the paper has one."""
    score = paper_ablation_score(task, setting, value)
    assert score is not None, (task, setting, value)
    return score


def test_the_papers_ablations_plan_129_steps_and_their_default_is_lite_d() -> None:
    for ablation in PAPER_ABLATIONS.values():
        assert ablation.task == TASK and ablation.setting == "horizons" and ablation.variant == "Lite-D"
        for horizons, score in ablation.scores:
            assert from_dict({"horizons": list(horizons)}).spans[0] == ablation.planning_horizon == 129
            assert "Table 6" in score.source and "table4.png" in score.source and "DiffuserLite-D" in score.source
    assert _paper_score(TASK, "horizons", [5, 5, 9]).mean == TASKS[TASK].paper_d == 88.5
    assert _paper_score(TASK, "horizons", [17, 5, 3]).mean == 89.0
    assert _paper_score(TASK, "horizons", (9, 17)).sem == 8.3
    assert paper_ablation_score(TASK, "horizons", [5, 9]) is None
    assert paper_ablation_score("hopper-medium-v2", "horizons", [5, 5, 9]) is None


def test_a_preset_queues_the_papers_ablation_as_ordinary_runs(client) -> None:
    [levels, level_horizons] = paper_presets()
    assert levels["body"]["ablation"] == {"setting": "horizons", "values": LEVELS}
    assert level_horizons["body"]["ablation"]["values"] == [[3, 5, 17], [9, 5, 5], [17, 5, 3]]
    assert levels["runs"] == 15 and levels["steps"] == 15 * 1_000_000
    r = client.post("/api/sweeps", json=levels["body"])
    assert r.status_code == 201, r.text
    sweep = r.json()
    assert sweep["ablation"] == {"setting": "horizons", "values": LEVELS} and sweep["progress"]["queued"] == 15
    names = [run["name"] for run in sweep["runs"]]
    assert names[0] == f"paper-levels/{TASK}/R1/horizons-9-17/seed0" and len(set(names)) == 15
    configs = [client.get(f"/api/runs/{run['id']}").json()["config"] for run in sweep["runs"]]
    assert [(c["horizons"], c["seed"]) for c in configs] == [(h, s) for h in LEVELS for s in range(5)]
    assert {c["task"] for c in configs} == {TASK} and {c["diffusion_gradient_steps"] for c in configs} == {1_000_000}
    assert client.get("/api/sweeps").json()[0]["ablation"]["setting"] == "horizons"
    assert client.post("/api/sweeps", json=levels["body"]).status_code == 409, "queued once; retry its runs instead"


def test_an_ablation_of_sampling_steps_with_r2_and_other_overrides(client) -> None:
    r = _ablation(
        client, "sampling_steps", [1, 3, 1, 10], seeds=[4], variants=["R1", "R2"], config=small_config(batch_size=64)
    )
    assert r.status_code == 201, r.text
    sweep = r.json()
    assert sweep["ablation"] == {"setting": "sampling_steps", "values": [1, 3, 10]}, "repeats dropped"
    assert sorted(run["name"] for run in sweep["runs"]) == sorted(
        f"abl/{TASK}/{v}/sampling_steps-{n}/seed4" for v in ("R1", "R2") for n in (1, 3, 10)
    )
    configs = [client.get(f"/api/runs/{run['id']}").json()["config"] for run in sweep["runs"]]
    assert {c["batch_size"] for c in configs} == {64} and {c["sampling_steps"] for c in configs} == {1, 3, 10}


@pytest.mark.parametrize(
    "setting, values, config, loc, message",
    [
        ("horizons", [[9, 17], [5]], None, ["body", "ablation", "values", 1], "horizons: must be a list of 2 to"),
        ("d_model", [64, 12], None, ["body", "ablation", "values", 1], "n_heads: must divide d_model (12)"),
        ("block", ["dit", "textbook"], None, ["body", "ablation", "values", 1], "block: must be one of reference, dit"),
        ("d_model", [64, 128], small_config(batch_size=0), ["body", "config", "batch_size"], "must be >= 1"),
        ("horizons", LEVELS, small_config(horizons=[5, 5, 9]), ["body", "config", "horizons"], "the ablation varies"),
    ],
)
def test_a_bad_ablation_is_a_422_naming_the_field_and_queues_nothing(
    client, setting, values, config, loc, message
) -> None:
    r = _ablation(client, setting, values, config=config)
    assert r.status_code == 422, r.text
    [problem] = r.json()["detail"]
    assert problem["loc"] == loc and problem["msg"].startswith(message), problem
    assert client.get("/api/runs").json() == [] and client.get("/api/sweeps").json() == []


def test_an_ablation_varies_one_setting_of_one_task(client) -> None:
    two = _ablation(client, "horizons", LEVELS, tasks=[TASK, "hopper-medium-v2"])
    assert two.status_code == 422 and two.json()["detail"][0]["loc"] == ["body", "tasks"]
    seed = _ablation(client, "seed", [0, 1])
    assert seed.status_code == 422 and seed.json()["detail"][0]["loc"][:3] == ["body", "ablation", "setting"]
    one = _ablation(client, "horizons", [[5, 5, 9]])
    assert one.status_code == 422 and one.json()["detail"][0]["loc"] == ["body", "ablation", "values"]


def play(c: TestClient | httpx.Client, n_runs: int, outcome: Callable[[dict], tuple[float, float]]) -> None:
    """Claims the next `n_runs` runs and finishes each with a final R1 evaluation whose score
    and one-environment planning latency (ms) `outcome` picks from the run's config."""
    wid = register(c)
    for _ in range(n_runs):
        got = claim_run(c, wid)
        score, latency = outcome(c.get(f"/api/runs/{got['run_id']}").json()["config"])
        r = c.post(
            f"/api/runs/{got['run_id']}/evaluations",
            json={
                "attempt": got["attempt"],
                "step": 1000,
                "kind": "final",
                "variant": "R1",
                "score_mean": score,
                "score_std": 1.0,
                "returns": [score],
                "scores": [score - 1, score + 1],
                "n_envs": 2,
                "n_episodes": 1,
                "latency_ms": 2 * latency,
                "latency_ms_1env": latency,
                "device": "cpu",
            },
        )
        assert r.status_code == 200, r.text
        c.post(f"/api/runs/{got['run_id']}/finish", json={"attempt": got["attempt"], "status": "succeeded"})


SCORES = {"[9, 17]": [70.0, 80.0, 76.0], "[5, 5, 9]": [88.0, 89.0, 88.5], "[5, 3, 5, 5]": [85.0, 86.0, 90.0]}
LATENCY = {"[9, 17]": [8.0, 8.5, 9.0], "[5, 5, 9]": [12.0, 12.5, 13.0], "[5, 3, 5, 5]": [16.0, 16.0, 17.0]}


def by_horizons(config: dict) -> tuple[float, float]:
    key = str(config["horizons"])
    return SCORES[key][config["seed"]], LATENCY[key][config["seed"]]


def test_the_ablation_view_groups_by_value_beside_the_papers_lite_d_numbers(client, browser_client) -> None:
    plain = client.post("/api/sweeps", json={"tasks": [TASK], "seeds": [0], "config": {}}).json()
    sweep = _ablation(client, "horizons", LEVELS, config={}).json()
    play(client, 1, lambda _: (91.0, 12.0))
    play(client, len(sweep["runs"]), by_horizons)

    answer = client.get("/api/results").json()
    assert [(r["task"], r["n"], r["run_ids"]) for r in answer["rows"]] == [(TASK, 1, [plain["runs"][0]["id"]])], (
        "ablation runs stay out of the main table"
    )
    [view] = answer["ablations"]
    assert client.get("/api/results", params={"sweep": sweep["id"]}).json() == {"rows": [], "ablations": [view]}
    assert client.get("/api/results", params={"sweep": plain["id"]}).json()["ablations"] == []
    assert (view["setting"], view["task"], view["values"]) == ("horizons", TASK, LEVELS)
    assert view["paper_variant"] == "Lite-D"
    assert "Lite-D" in view["caveat"] and "R1" in view["caveat"] and "Table 6" in view["paper_source"]
    assert [(r["value"], r["variant"], r["n"], r["seeds"]) for r in view["rows"]] == [
        (h, "R1", 3, [0, 1, 2]) for h in LEVELS
    ]
    for row, (horizons, paper) in zip(view["rows"], PAPER_ABLATIONS["levels"].scores):
        scores, hz = SCORES[str(row["value"])], [1000 / x for x in LATENCY[str(row["value"])]]
        mean, sem = statistics.fmean(scores), statistics.stdev(scores) / math.sqrt(3)
        assert list(horizons) == row["value"] and row["label"] == "mean ± s.e. over seeds"
        assert row["mean"] == pytest.approx(mean) and row["sem"] == pytest.approx(sem)
        assert row["paper"] == {
            "mean": paper.mean,
            "sem": paper.sem,
            "source": paper.source,
            "label": "mean ± s.e. over 5 seeds",
            "variant": ABLATION_VARIANT,
        }
        assert row["difference"] == pytest.approx(mean - paper.mean)
        assert row["agreement"] == agreement(mean - paper.mean, sem, paper.sem)
        assert row["planning"]["hz_1env"] == pytest.approx(statistics.fmean(hz))
        assert row["planning"]["hz_1env_sem"] == pytest.approx(statistics.stdev(hz) / math.sqrt(3))
        assert row["differing_config_keys"] == []
    assert len(view["compare_run_ids"]) == 9  # every value's runs, up to 12 in all

    page = browser_client.get(f"/results?sweep={sweep['id']}").text
    assert "The paper&#39;s numbers are Lite-D&#39;s" in page and "88.5 ± 0.4" in page and "75.6 ± 8.3" in page
    assert f'id="ablation-chart-{sweep["id"]}"' in page and "/vendor/plotly.min.js" in page
    assert "<code>[5, 3, 5, 5]</code>" in page and view["rows"][1]["agreement"]["text"] in page
    assert "color_by=horizons" in page and "results-table" not in page
    everything = browser_client.get("/results").text
    assert "results-table" in everything and "ablation-table" in everything
    sweep_page = browser_client.get(f"/sweeps/{sweep['id']}").text
    assert "ablation-table" in sweep_page and "Lite-D" in sweep_page and "ablation-chart-" not in sweep_page
    markdown = client.get("/api/results.md", params={"sweep": sweep["id"]}).text
    assert f"## Ablation: horizons on {TASK}" in markdown and "| [9, 17] | R1 | 0, 1, 2 (3) |" in markdown
    assert "75.6 ± 8.3 (s.e. over 5 seeds)" in markdown and "Lite-D" in markdown


def test_an_ablation_value_waiting_for_its_runs_shows_the_papers_number(client, browser_client) -> None:
    sweep = _ablation(client, "horizons", [[3, 5, 17], [9, 5, 5]], seeds=[0]).json()
    [first, second] = client.get("/api/results").json()["ablations"][0]["rows"]
    assert (first["n"], first["mean"], first["paper"]["mean"]) == (0, None, 85.6)
    assert first["agreement"] == {"verdict": "not judged", "text": "no finished run yet"}
    assert second["paper"]["mean"] == 88.6
    page = browser_client.get(f"/results?sweep={sweep['id']}").text
    assert "no finished run yet" in page and "85.6 ± 0.6" in page


def test_compare_colours_runs_by_the_varied_setting(client, browser_client) -> None:
    runs = _ablation(client, "horizons", [[9, 17], [5, 5, 9]], seeds=[0, 1]).json()["runs"]
    ids = ",".join(str(r["id"]) for r in runs)
    page = browser_client.get(f"/compare?runs={ids}&color_by=horizons").text
    assert [int(p.split('"')[0]) for p in page.split('class="swatch" data-index="')[1:]] == [0, 0, 1, 1]
    assert "one colour per value of <code>horizons</code>" in page and "[9, 17]" in page
    per_run = browser_client.get(f"/compare?runs={ids}").text
    assert [int(p.split('"')[0]) for p in per_run.split('class="swatch" data-index="')[1:]] == [0, 1, 2, 3]
    bad = browser_client.get(f"/compare?runs={ids}&color_by=nope")
    assert bad.status_code == 404 and "Cannot colour runs by" in bad.text


@pytest.mark.parametrize("horizons", [[9, 17], [5, 3, 5, 5]])
def test_charts_exports_and_figures_follow_the_number_of_levels(client, browser_client, settings, horizons) -> None:
    n = len(horizons)
    rid = create_run(client, TASK, horizons=horizons)["id"]
    attempt = claim_run(client, register(client))["attempt"]
    keys = [f"loss{i}" for i in range(n)] + ["invdyn_loss"]
    points = [
        {"key": k, "step": s, "value": 1.0 / (s + i + 1), "wall_time": 1e9 + s}
        for i, k in enumerate(keys)
        for s in range(0, 50, 10)
    ]
    client.post(f"/api/runs/{rid}/metrics", json={"attempt": attempt, "points": points}).raise_for_status()
    series = client.get(f"/api/runs/{rid}/charts").json()["series"]
    assert set(series) == set(keys) and all(len(series[k]["steps"]) == 5 for k in keys)

    title = f"Diffusion loss (levels {', '.join(map(str, range(n)))})"
    page = browser_client.get(f"/runs/{rid}").text
    assert f'data-keys="{",".join(keys[:-1])}"' in page and title in page
    table = client.get(f"/api/runs/{rid}/charts/loss.json").json()
    assert table["title"] == title and {row[2] for row in table["rows"]} == set(keys[:-1])
    rows = list(csv.DictReader(io.StringIO(client.get(f"/api/runs/{rid}/charts/loss.csv").text)))
    assert len(rows) == 5 * n and {r["key"] for r in rows} == set(keys[:-1])

    from app.services.figures import chart_figure

    loss = charts(n)[0]
    ax = chart_figure(loss, "t", series, [], None).axes[0]
    assert [line.get_label() for line in ax.get_lines()] == keys[:-1] and ax.get_title().startswith(title)
    assert client.post(f"/api/runs/{rid}/figures").status_code == 200
    assert (settings.data_dir / "results" / str(rid) / "loss_curve.png").stat().st_size > 1000


def test_comparing_runs_of_different_levels_draws_every_level(client, browser_client) -> None:
    two, four = (create_run(client, TASK, horizons=h)["id"] for h in ([9, 17], [5, 3, 5, 5]))
    wid = register(client)
    for _ in range(2):
        got = claim_run(client, wid)
        n = len(client.get(f"/api/runs/{got['run_id']}").json()["config"]["horizons"])
        points = [{"key": f"loss{i}", "step": 10, "value": 0.5, "wall_time": 1e9} for i in range(n)]
        client.post(f"/api/runs/{got['run_id']}/metrics", json={"attempt": got["attempt"], "points": points})
    data = client.get("/api/compare", params={"runs": f"{two},{four}"}).json()["charts"]["loss"]
    assert data["title"] == "Diffusion loss (levels 0, 1, 2, 3)"
    assert sorted((row[0], row[2]) for row in data["rows"]) == sorted(
        [(two, "loss0"), (two, "loss1")] + [(four, f"loss{i}") for i in range(4)]
    )
    assert "Diffusion loss (levels 0, 1, 2, 3)" in browser_client.get(f"/compare?runs={two},{four}").text


def test_the_ablation_pages_link_under_the_path_prefix(lab) -> None:  # noqa: F811
    proxy, api = lab
    sweep = _ablation(api, "horizons", LEVELS, seeds=[0, 1, 2]).json()
    play(api, len(sweep["runs"]), by_horizons)
    ids = ",".join(str(r["id"]) for r in sweep["runs"][:4])
    for page in (
        "/sweeps",
        f"/sweeps/{sweep['id']}",
        f"/sweeps/{sweep['id']}/progress",
        "/results",
        f"/results?sweep={sweep['id']}",
        f"/compare?runs={ids}&color_by=horizons",
    ):
        r = proxy.get(proxy.root + page)
        assert r.status_code == 200, page
        links = _urls(r.text)
        assert links and all(v.startswith(f"{proxy.root}/") for _, v in links), (page, links)
        for attribute, value in links:
            if attribute == "href" and "/compare?" in value:
                assert proxy.get(value).status_code == 200, value
