"""deploy/compose.yaml: valid against the Compose Specification's own JSON schema (vendored by
check-jsonschema), and holding what docs/many-gpus.md promises a small always-on machine: PostgreSQL
and the server on named volumes, health checks, restarts, secrets only from the env file, and a server
that starts once the database is ready."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose.yaml"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    # read from the installed files, not imported: check-jsonschema's CLI needs a newer click than SkyPilot allows
    path = importlib.metadata.distribution("check-jsonschema").locate_file(
        "check_jsonschema/builtin_schemas/vendor/compose-spec.json"
    )
    schema = json.loads(Path(str(path)).read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def test_valid_against_the_compose_specification_schema(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    validator.validate(compose)


def test_the_schema_catches_a_mistake(compose: dict[str, Any], validator: jsonschema.protocols.Validator) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["server"]["restart_policy"] = "always"  # not a Compose key: restart is
    assert not validator.is_valid(broken)


def test_services_and_named_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"server", "postgres"}
    assert set(compose["volumes"]) == {"postgres-data", "lab-data"}
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "lab-data:/data" in services["server"]["volumes"]


def test_postgres_is_the_official_image_checked_by_pg_isready(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert re.fullmatch(r"postgres:\d+", postgres["image"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_server_is_built_here_and_checked_on_healthz(compose: dict[str, Any]) -> None:
    server = compose["services"]["server"]
    assert server["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert (COMPOSE.parent / server["build"]["context"] / server["build"]["dockerfile"]).is_file()
    assert server["command"][:3] == ["python", "-m", "app.server"]
    assert "--host" in server["command"] and server["command"][server["command"].index("--host") + 1] == "0.0.0.0"
    assert any("/healthz" in part for part in server["healthcheck"]["test"])
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_both_restart_unless_stopped(compose: dict[str, Any]) -> None:
    assert {s["restart"] for s in compose["services"].values()} == {"unless-stopped"}


def test_secrets_come_from_the_env_file_only(compose: dict[str, Any]) -> None:
    server = compose["services"]["server"]
    assert [e["path"] for e in server["env_file"]] == [".env"]
    assert "DLITE_TOKEN" not in server.get("environment", {})  # only from the env file
    assert server["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://dlite:${POSTGRES_PASSWORD:?")
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_server_is_published_on_loopback_by_default(compose: dict[str, Any]) -> None:
    (port,) = compose["services"]["server"]["ports"]
    assert port.startswith("${DLITE_BIND:-127.0.0.1}:")


def test_env_example_names_every_variable_and_no_usable_secret() -> None:
    values = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    )
    assert {"DLITE_TOKEN", "POSTGRES_PASSWORD"} <= set(values)
    assert len(values["DLITE_TOKEN"]) < 24  # the server refuses a token this short: nobody runs the placeholder
    assert values["POSTGRES_PASSWORD"] == ""  # compose refuses an empty one


def test_the_real_env_file_is_ignored_by_git() -> None:
    assert "/deploy/.env" in (ROOT / ".gitignore").read_text().splitlines()
