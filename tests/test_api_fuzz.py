"""A bounded fuzz of the whole API from its own OpenAPI document (schemathesis, in
process): no request may make the server fail (5xx), and every answer must be one the
document declares, with the declared content type and schema. The streams are left out:
they never end. `schemathesis run` against a real server does the long version."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from app.main import create_app
from tests.app_helpers import create_run, make_settings

EXAMPLES_PER_OPERATION = 3
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, dict[str, str]]]:
    settings_ = make_settings(tmp_path_factory.mktemp("fuzz"))
    headers = {"Authorization": f"Bearer {settings_.token}"}
    app = create_app(settings_)
    with TestClient(app, headers=headers) as client:
        create_run(client)  # run 1 exists, so /runs/{run_id} routes get past their 404
        yield schemathesis.openapi.from_asgi("/api/openapi.json", app, headers=headers), headers


@pytest.fixture(scope="module")
def api_schema(api):
    return api[0]


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path_regex="/stream$")


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
          suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
def test_no_request_breaks_the_api_or_its_document(case, api) -> None:
    case.call_and_validate(headers=api[1], checks=CHECKS)
