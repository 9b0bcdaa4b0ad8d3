"""`dlite launch` and the SkyPilot task file, on CPU with no cloud: SkyPilot's own parser and schema
judge the file and what a dry run prints; a mocked `sky.jobs.launch` shows what a launch would hand
SkyPilot; the tokens never reach the output or the logs; without SkyPilot, or without a cloud, the
command says exactly what to do and fails.

The tests that need SkyPilot skip where it is not installed: it cannot share an environment with the
lab's pinned stack (pyproject.toml's `cloud` extra says why), so CI runs them only where it was
installed beside the lab (a virtual environment with --system-site-packages)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Set
from pathlib import Path
from typing import Any, cast

import pytest
import tomllib
import yaml

from worker import cli, launch

ROOT = Path(__file__).resolve().parents[1]
TASK_FILE = ROOT / "deploy" / "skypilot" / "worker.yaml"
SERVER = "https://lab.example.org"
TOKEN = "dlite-secret-token-0123456789abcdef"
HF = "hf_secretHubTokenAbcdefghijklmnop"


@pytest.fixture
def sky() -> Any:
    return pytest.importorskip("sky")


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLITE_TOKEN", TOKEN)
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.delenv("DLITE_SERVER", raising=False)
    monkeypatch.delenv("DLITE_INSTALL", raising=False)


@pytest.fixture
def no_cloud_calls(sky: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run must ask nothing of an API server, a cloud or the price catalog."""

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("a dry run reached SkyPilot's API server or catalog")

    monkeypatch.setattr(launch, "enabled_clouds", refuse)
    monkeypatch.setattr(launch, "hourly_price", refuse)
    monkeypatch.setattr(sky.jobs, "launch", refuse)


class FakeJobs:
    """Stands in for `sky.jobs.launch` and `sky.stream_and_get`: records what a launch hands over."""

    def __init__(self, fail: Set[str] = frozenset()) -> None:
        self.launched: list[tuple[Any, str | None]] = []
        self.fail = fail

    def launch(self, task: Any, name: str | None = None, **kwargs: Any) -> str:
        if name in self.fail:
            raise RuntimeError(f"quota exceeded for {name}")
        self.launched.append((task, name))
        return f"request-{name}"

    def stream_and_get(self, request_id: str) -> tuple[list[int], None]:
        return [int(request_id.rsplit("-", 1)[1])], None


@pytest.fixture
def fake_jobs(sky: Any, monkeypatch: pytest.MonkeyPatch) -> FakeJobs:
    fake = FakeJobs()
    monkeypatch.setattr(sky.jobs, "launch", fake.launch)
    monkeypatch.setattr(sky, "stream_and_get", fake.stream_and_get)
    monkeypatch.setattr(launch, "enabled_clouds", lambda _sky: ["AWS", "GCP"])
    monkeypatch.setattr(
        launch, "hourly_price", lambda _sky, _res, _clouds: (launch.Price(0.21, "AWS", "g4dn.xlarge"), "")
    )
    return fake


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["launch", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text and HF not in text


def dry_run_task(out: str) -> dict[str, Any]:
    """The YAML a dry run prints after its summary."""
    return yaml.safe_load(out.split("nothing was launched\n", 1)[1])


# --- without SkyPilot: these run everywhere ---------------------------------------------------------------


def test_without_skypilot_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tokens: None, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sky", None)  # `import sky` raises ImportError
    code, out, err = run(["--workers", "2", "--server", SERVER, "--dry-run"], capsys)
    assert code != 0
    assert "pip install 'diffuserlite-lab[cloud]'" in err
    assert out == ""


def test_without_a_server_it_says_which_flag(tokens: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--dry-run"], capsys)
    assert code == 2 and "pass --server" in err


def test_task_file_pins_the_version_pyproject_says() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    config = yaml.safe_load(TASK_FILE.read_text())
    assert config["envs"]["DLITE_VERSION"] == version
    assert launch.TASK_FILE == TASK_FILE


def test_task_file_holds_no_secret_value() -> None:
    config = yaml.safe_load(TASK_FILE.read_text())
    assert config["secrets"] == {"DLITE_TOKEN": None, "HF_TOKEN": None}
    assert "DLITE_TOKEN" not in config["envs"] and "HF_TOKEN" not in config["envs"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:8000", "ftp://lab.example.org", "lab"])
def test_a_server_no_cloud_machine_reaches_is_refused(url: str) -> None:
    with pytest.raises(launch.LaunchError):
        launch.check_server_url(url)


def test_plain_http_is_a_warning_and_https_is_fine() -> None:
    assert "TLS" in launch.check_server_url("http://203.0.113.7:8000")[0]
    assert launch.check_server_url(SERVER) == []


# --- with SkyPilot -------------------------------------------------------------------------------------------


def test_task_file_passes_skypilot_validation(sky: Any) -> None:
    # the file leaves DLITE_SERVER null so that SkyPilot refuses to start a worker without one...
    with pytest.raises(ValueError, match="DLITE_SERVER.*--env"):
        sky.Task.from_yaml(str(TASK_FILE))
    # ...and with it, as `sky jobs launch --env DLITE_SERVER=... --secret ...` gives it, the task is valid
    task = sky.Task.from_yaml_config(
        yaml.safe_load(TASK_FILE.read_text()),
        env_overrides=[("DLITE_SERVER", SERVER)],
        secrets_overrides=[("DLITE_TOKEN", TOKEN), ("HF_TOKEN", HF)],
    )
    (resources,) = task.resources
    assert resources.accelerators == {"T4": 1}
    assert resources.use_spot
    assert resources.job_recovery["strategy"] == "EAGER_NEXT_REGION"
    assert 'dlite worker --server "$DLITE_SERVER"' in task.run
    assert "diffuserlite-lab==$DLITE_VERSION" in task.setup


def test_dry_run_prints_a_valid_task_without_secrets(
    sky: Any, tokens: None, no_cloud_calls: None, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    code, out, err = run(["--workers", "3", "--gpu", "L4", "--server", SERVER, "--dry-run"], capsys)
    assert code == 0, err
    assert "3 managed jobs (dlite-worker-1..3)" in out and "L4:1" in out
    assert "not looked up in a dry run" in out
    config = dry_run_task(out)
    assert config["secrets"] == {"DLITE_TOKEN": "<set>", "HF_TOKEN": "<set>"}
    assert config["envs"]["DLITE_SERVER"] == SERVER
    task = sky.Task.from_yaml_config(config)  # SkyPilot's own schema and parser accept what was printed
    (resources,) = task.resources
    assert resources.accelerators == {"L4": 1} and resources.use_spot
    assert_no_secret(out, err, caplog.text)


def test_dry_run_shows_a_missing_token_as_not_set(
    sky: Any, monkeypatch: pytest.MonkeyPatch, no_cloud_calls: None, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DLITE_TOKEN", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    code, out, err = run(["--server", SERVER, "--dry-run"], capsys)
    assert code == 0
    assert dry_run_task(out)["secrets"] == {"DLITE_TOKEN": "<not set>", "HF_TOKEN": "<not set>"}
    assert "DLITE_TOKEN is not set" in err and "HF_TOKEN is not set" in err


def test_launch_hands_skypilot_n_jobs_with_the_right_resources_secrets_and_env(
    sky: Any, tokens: None, fake_jobs: FakeJobs, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    code, out, err = run(["--workers", "3", "--gpu", "A10G", "--infra", "aws", "--server", SERVER + "/"], capsys)
    assert code == 0, err
    assert [name for _, name in fake_jobs.launched] == ["dlite-worker-1", "dlite-worker-2", "dlite-worker-3"]
    for i, (task, name) in enumerate(fake_jobs.launched, start=1):
        (resources,) = task.resources
        assert resources.accelerators == {"A10G": 1}
        assert resources.use_spot and resources.job_recovery["strategy"] == "EAGER_NEXT_REGION"
        assert str(resources.cloud) == "AWS"
        assert task.envs["DLITE_SERVER"] == SERVER
        assert task.envs["DLITE_WORKER_NAME"] == name == f"dlite-worker-{i}"
        assert task.envs["DLITE_VERSION"] == launch.lab_version()
        assert {k: v.get_secret_value() for k, v in task.secrets.items()} == {"DLITE_TOKEN": TOKEN, "HF_TOKEN": HF}
        assert not task.managed_secret_refs  # values given here, nothing looked up on an API server
    assert "$0.21/hour a worker, $0.63/hour for 3 (AWS g4dn.xlarge" in out
    assert "dlite-worker-3: launched (managed job 3)" in out
    assert_no_secret(out, err, caplog.text)


def test_on_demand_and_flags_for_the_tokens(
    sky: Any, monkeypatch: pytest.MonkeyPatch, fake_jobs: FakeJobs, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DLITE_TOKEN", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code, out, err = run(["--on-demand", "--server", SERVER, "--token", TOKEN, "--hf-token", HF], capsys)
    assert code == 0, err
    ((task, _),) = fake_jobs.launched
    (resources,) = task.resources
    assert not resources.use_spot and resources.accelerators == {"T4": 1}
    assert task.secrets["DLITE_TOKEN"].get_secret_value() == TOKEN
    assert "on-demand" in out
    assert_no_secret(out, err)


def test_a_cluster_without_spot_gets_on_demand(
    sky: Any, tokens: None, fake_jobs: FakeJobs, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("kubernetes")  # SkyPilot's kubernetes extra: without it SkyPilot cannot tell
    monkeypatch.setattr(launch, "enabled_clouds", lambda _sky: ["Kubernetes"])
    code, out, err = run(["--infra", "k8s", "--server", SERVER], capsys)
    assert code == 0, err
    ((task, _),) = fake_jobs.launched
    assert not next(iter(task.resources)).use_spot
    assert "no spot machines: on-demand" in err
    code, _, err = run(["--infra", "k8s", "--spot", "--server", SERVER], capsys)
    assert code == 2 and "pass --on-demand" in err


def test_a_job_skypilot_refuses_is_reported_and_fails_the_command(
    sky: Any, tokens: None, fake_jobs: FakeJobs, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_jobs.fail = {"dlite-worker-2"}
    code, out, err = run(["--workers", "3", "--server", SERVER], capsys)
    assert code == 1
    assert "dlite-worker-2: not launched: RuntimeError: quota exceeded" in err
    assert "2 of 3 launched" in out


def test_launch_without_a_token_is_refused(
    sky: Any, monkeypatch: pytest.MonkeyPatch, fake_jobs: FakeJobs, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DLITE_TOKEN", raising=False)
    code, _, err = run(["--server", SERVER], capsys)
    assert code == 2 and "set DLITE_TOKEN" in err
    assert fake_jobs.launched == []


def test_without_an_enabled_cloud_it_says_run_sky_check(
    sky: Any, tokens: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sky.client import sdk

    launched: list[Any] = []
    monkeypatch.setattr(sky.jobs, "launch", lambda *a, **k: launched.append(a))
    monkeypatch.setattr(sdk, "enabled_clouds", lambda *a, **k: "request-enabled-clouds")
    monkeypatch.setattr(sky, "get", lambda request_id: [])  # what an API server answers before `sky check` passes
    code, out, err = run(["--workers", "2", "--server", SERVER], capsys)
    assert code == 2
    assert "no cloud or cluster is enabled for SkyPilot: run `sky check`" in err
    assert launched == [] and out == ""


def test_when_skypilot_cannot_answer_it_says_run_sky_check(
    sky: Any, tokens: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sky.client import sdk

    def unreachable(*_: Any, **__: Any) -> None:
        raise sky.exceptions.ApiServerConnectionError("http://127.0.0.1:46580")

    monkeypatch.setattr(sdk, "enabled_clouds", unreachable)
    code, _, err = run(["--server", SERVER], capsys)
    assert code == 2 and "run `sky check`" in err


def test_an_infra_that_is_not_enabled_names_its_sky_check(
    sky: Any, tokens: None, fake_jobs: FakeJobs, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(launch, "enabled_clouds", lambda _sky: ["GCP"])
    code, _, err = run(["--infra", "aws", "--server", SERVER], capsys)
    assert code == 2 and "run `sky check aws`" in err
    assert fake_jobs.launched == []


def test_price_comes_from_skypilot_catalog_and_resources_get_cost(sky: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[dict[str, Any]] = []

    def instance_types(name: str, count: int, **kwargs: Any) -> tuple[list[str], list[str]]:
        asked.append({"name": name, "count": count, **kwargs})
        return ({"aws": ["g4dn.xlarge"], "gcp": ["n1-highmem-4"]}[kwargs["clouds"]], [])

    monkeypatch.setattr(sky.catalog, "get_instance_type_for_accelerator", instance_types)
    monkeypatch.setattr(
        sky.Resources, "get_cost", lambda self, seconds: {"AWS": 0.16, "GCP": 0.14}[str(self.cloud)] * seconds / 3600
    )
    resources = sky.Resources(accelerators="T4", use_spot=True)
    price, why = launch.hourly_price(sky, resources, ["AWS", "GCP", "Kubernetes"])
    assert price == launch.Price(cast(float, pytest.approx(0.14)), "GCP", "n1-highmem-4") and why == ""
    assert {a["clouds"] for a in asked} == {"aws", "gcp"} and all(a["use_spot"] for a in asked)


def test_no_price_says_why(sky: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*_: Any, **__: Any) -> None:
        raise ConnectionError("Failed to fetch AWS catalog aws/vms.csv")

    monkeypatch.setattr(sky.catalog, "get_instance_type_for_accelerator", offline)
    price, why = launch.hourly_price(sky, sky.Resources(accelerators="T4"), ["AWS", "Kubernetes"])
    assert price is None
    assert why.startswith("SkyPilot cannot tell") and "ConnectionError" in why and "kubernetes" in why
