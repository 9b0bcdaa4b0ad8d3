"""Requests the fuzz test (tests/test_api_fuzz.py) once found the document allowing and the
server refusing with a 422, each now checked on every run instead of waiting for a fuzzer
to draw it again: the served OpenAPI document (JSON Schema 2020-12, $refs resolved against
its components) must call it invalid, the server must refuse it, and a valid neighbour
must pass both."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.app_helpers import claim_run, create_run, register

DOCUMENT = "urn:dlite:openapi"
"""The id the document is registered under, for its #/components/... references."""


class Document:
    """The served OpenAPI document, checking a request the way a client generator reads it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry: Registry = Registry().with_resource(
            DOCUMENT, Resource.from_contents(document, default_specification=DRAFT202012)
        )

    def errors(
        self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None
    ) -> list[tuple[str, str]]:
        """Where and what the document finds wrong with the request: its path and query
        parameters as one object (typed as the route reads them), then its JSON body."""
        at = ("paths", path, method)
        operation = self.document["paths"][path][method]
        declared = [(i, p) for i, p in enumerate(operation.get("parameters", [])) if p["in"] in ("path", "query")]
        found = self._errors(
            {
                "type": "object",
                "properties": {p["name"]: _ref(*at, "parameters", i, "schema") for i, p in declared},
                "required": [p["name"] for _, p in declared if p.get("required")],
            },
            params or {},
        )
        if "requestBody" in operation:
            found += self._errors(_ref(*at, "requestBody", "content", "application/json", "schema"), body)
        return found

    def _errors(self, schema: dict[str, Any], instance: Any) -> list[tuple[str, str]]:
        validator = Draft202012Validator(schema, registry=self.registry)
        return [("/".join(map(str, e.absolute_path)), e.message) for e in validator.iter_errors(instance)]


def _ref(*keys: str | int) -> dict[str, str]:
    """A $ref to the document's part at `keys`: its own $refs (#/components/...) then resolve
    against the document, as they do for a client reading it."""
    pointer = "".join("/" + str(k).replace("~", "~0").replace("/", "~1") for k in keys)
    return {"$ref": f"{DOCUMENT}#{quote(pointer, safe='/~')}"}


@pytest.fixture
def document(client: TestClient) -> Document:
    return Document(client.get("/api/openapi.json").json())


def _answer(
    document: Document,
    client: TestClient,
    method: str,
    route: str,
    wrong: str | None,
    where: dict[str, Any] | None = None,
    query: dict[str, Any] | None = None,
    body: Any = None,
) -> int:
    """The status the server answers the request with (path parameters `where`), once the
    document has found it wrong at `wrong` only (a parameter, or a path into the body) or,
    for None, valid; a 422 must name the field the document does."""
    errors = document.errors(method, route, {**(where or {}), **(query or {})}, body)
    assert [at for at, _ in errors] == ([wrong] if wrong else []), errors
    answer = client.request(method.upper(), route.format(**(where or {})), params=query, json=body)
    if answer.status_code == 422:
        assert wrong and {e["loc"][1] for e in answer.json()["detail"]} == {wrong.split("/")[0]}, answer.text
    return answer.status_code


@pytest.mark.parametrize("route", ["/api/compare", "/api/compare/charts/{chart}.{fmt}"])
def test_a_run_id_of_zeros_only_is_invalid_to_both(client: TestClient, document: Document, route: str) -> None:
    rid = create_run(client)["id"]
    where = {"chart": "loss", "fmt": "json"} if "{chart}" in route else {}
    assert _answer(document, client, "get", route, "runs", where, {"runs": "000"}) == 422
    leading = {"runs": f"00{rid}"}  # zeros before a real id are fine
    assert _answer(document, client, "get", route, None, where, leading) == 200


def test_a_run_backs_up_to_one_place_in_both(client: TestClient, document: Document) -> None:
    both = {"task": "hopper-medium-v2", "config": {"hub_repo": "user/runs", "backup_dir": "/backups"}}
    assert _answer(document, client, "post", "/api/runs", "config", body=both) == 422
    one = {"task": "hopper-medium-v2", "config": {"hub_repo": "user/runs"}}
    assert _answer(document, client, "post", "/api/runs", None, body=one) == 201


def test_a_metric_point_needs_a_value_or_a_nonfinite_in_both(client: TestClient, document: Document) -> None:
    rid = create_run(client)["id"]
    attempt = claim_run(client, register(client))["attempt"]
    route, where = "/api/runs/{run_id}/metrics", {"run_id": rid}

    def body(**point: Any) -> dict[str, Any]:
        return {"attempt": attempt, "points": [{"key": "loss0", "step": 1, "wall_time": 1.7e9, **point}]}

    for empty in ({"value": None, "nonfinite": None}, {}):
        assert _answer(document, client, "post", route, "points/0", where, body=body(**empty)) == 422
    for point in ({"value": 0.5, "nonfinite": None}, {"value": None, "nonfinite": "nan"}):
        assert _answer(document, client, "post", route, None, where, body=body(**point)) == 200


def test_a_sweep_of_an_empty_task_name_is_invalid_to_both(client: TestClient, document: Document) -> None:
    sweep = {"tasks": [""], "seeds": [0], "config": {"diffusion_gradient_steps": 10, "invdyn_gradient_steps": 10}}
    assert _answer(document, client, "post", "/api/sweeps", "tasks/0", body=sweep) == 422
    assert client.get("/api/runs").json() == [], "nothing queued"
    sweep["tasks"] = ["hopper-medium-v2"]
    assert _answer(document, client, "post", "/api/sweeps", None, body=sweep) == 201


def test_a_worker_cap_below_zero_or_above_the_bound_is_invalid_to_both(client: TestClient, document: Document) -> None:
    worker_id = register(client)
    route, where = "/api/workers/{worker_id}", {"worker_id": worker_id}
    for wrong in (-1, 10_001):
        assert _answer(document, client, "patch", route, "max_runs", where, body={"max_runs": wrong}) == 422
    for cap in (0, 10_000, None):
        assert _answer(document, client, "patch", route, None, where, body={"max_runs": cap}) == 200


def test_a_clone_source_of_a_unicode_digit_is_a_page_not_a_crash(client: TestClient) -> None:
    """'²' passes str.isdigit but not int(): the fuzz test found it as a 500."""
    for source in ("²", "١", "0x1"):
        answer = client.get("/runs/new", params={"from": source})
        assert answer.status_code == 404 and f"no run {source} to clone" in answer.text
