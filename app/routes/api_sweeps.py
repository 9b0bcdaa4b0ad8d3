"""Sweeps: queue tasks × seeds × variants (× the values of one setting, for an ablation) as
ordinary runs, follow them, cancel them as one."""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, Path
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from app import schemas
from app.auth import require_api
from app.db import Database
from app.deps import get_db
from app.protocol import MAX_INT, STRICT_BODY, Integer
from app.routes.responses import API, problems
from app.services import sweeps
from app.services.claims import sweep_leases
from dlite.config import FIELDS
from dlite.config import json_schema as config_json_schema
from dlite.tasks import TASKS

router = APIRouter(prefix="/api", dependencies=[Depends(require_api)], tags=["sweeps"], responses=API)

SweepId = Annotated[int, Path(ge=1, le=MAX_INT, description="the sweep's id")]
MAX_SEEDS = 100


MAX_ABLATION_VALUES = 20
OVERRIDES = config_json_schema(exclude=sweeps.SWEEP_KEYS)


def _ablation_rules() -> dict[str, Any]:
    """What the server checks of an ablation, as JSON Schema: none, or one per setting, whose
    values are that setting's, which `config` leaves out, on one task."""
    per_setting = [
        {
            "required": ["ablation"],
            "properties": {
                "ablation": {
                    "type": "object",
                    "properties": {"setting": {"const": name}, "values": {"items": OVERRIDES["properties"][name]}},
                },
                "config": {"not": {"required": [name]}},
                "tasks": {"maxItems": 1},
            },
        }
        for name in sweeps.ABLATION_SETTINGS
    ]
    return {"oneOf": [{"properties": {"ablation": {"type": "null"}}}, *per_setting]}


class AblationBody(BaseModel):
    model_config = STRICT_BODY

    setting: Literal[sweeps.ABLATION_SETTINGS] = Field(  # type: ignore[valid-type]
        description="the config setting the ablation varies; the other settings stay as `config` sets them"
    )
    values: list[Any] = Field(
        min_length=2,
        max_length=MAX_ABLATION_VALUES,
        description="its values, each checked as in a run's config, e.g. [[9, 17], [5, 5, 9]] for horizons",
    )


SEED_MAX = 2**32 - 1
Seed = Annotated[
    Integer, Field(ge=0, le=SEED_MAX), WithJsonSchema({"type": "integer", "minimum": 0, "maximum": SEED_MAX})
]
"""A sweep's seed. Its schema is spelled out: pydantic writes the bounds of a validated type
inside a list as `ge`/`le`, which JSON Schema ignores, so the document would promise any integer."""


class CreateSweep(BaseModel):
    model_config = ConfigDict(**STRICT_BODY, json_schema_extra=_ablation_rules())

    name: str | None = Field(
        None,
        min_length=1,
        max_length=80,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="prefix of the runs' names (their backup folders); letters, digits, . _ -",
    )
    tasks: list[Annotated[str, Field(json_schema_extra={"enum": list(TASKS)})]] = Field(
        min_length=1, max_length=len(TASKS)
    )
    seeds: list[Seed] = Field(sweeps.PAPER_SEEDS, min_length=1, max_length=MAX_SEEDS)
    variants: list[Literal["R1", "R2"]] = Field(
        ["R1"], min_length=1, max_length=2, description="R2 runs train R1, reflow, and evaluate both"
    )
    config: dict[str, Any] = Field(
        {},
        max_length=len(FIELDS),
        json_schema_extra=OVERRIDES,
        description="overrides shared by every run: GET /api/config/schema lists them",
    )
    is_demo: bool = False
    ablation: AblationBody | None = Field(
        None, description="vary one setting over values (one task only): one run per value × variant × seed"
    )

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r}; expected some of: {', '.join(TASKS)}")
        return list(dict.fromkeys(tasks))

    @field_validator("seeds", "variants")
    @classmethod
    def _no_repeats(cls, values: list[Any]) -> list[Any]:
        return list(dict.fromkeys(values))


@router.post("/sweeps", status_code=201, response_model=schemas.SweepDetail, responses=problems(409))
def create_sweep(body: CreateSweep, db: Database = Depends(get_db)) -> dict[str, Any]:
    """Queues one run per task × variant × seed (× ablation value); a bad override or value
    (422 naming it) queues none."""
    ablation = None if body.ablation is None else sweeps.Ablation(body.ablation.setting, body.ablation.values)
    try:
        with db.write() as session:
            sweep = sweeps.create_sweep(
                session,
                body.name,
                body.tasks,
                body.seeds,
                cast(list[str], body.variants),  # variant names are strings
                body.config,
                body.is_demo,
                ablation,
            )
            return sweeps.sweep_detail(session, sweep)
    except sweeps.SweepErrors as e:
        raise RequestValidationError(
            [{"loc": ("body", *loc), "msg": message, "type": "value_error"} for loc, message in e.errors]
        ) from None


@router.get("/sweeps", response_model=list[schemas.SweepSummary])
def list_sweeps(db: Database = Depends(get_db)) -> list[dict[str, Any]]:
    sweep_leases(db)
    with db.read() as session:
        return sweeps.list_sweeps(session)


@router.get("/sweeps/{sweep_id}", response_model=schemas.SweepDetail, responses=problems(404))
def get_sweep(sweep_id: SweepId, db: Database = Depends(get_db)) -> dict[str, Any]:
    """The sweep, its progress (counts by status, ETA from measured steps/s) and its runs."""
    sweep_leases(db)
    with db.read() as session:
        return sweeps.sweep_detail(session, sweeps.get_sweep(session, sweep_id))


@router.post("/sweeps/{sweep_id}/cancel", response_model=schemas.SweepCancelled, responses=problems(404))
def cancel_sweep(sweep_id: SweepId, db: Database = Depends(get_db)) -> dict[str, Any]:
    """Cancels every run of the sweep that has not ended."""
    with db.write() as session:
        return sweeps.cancel_sweep(session, sweeps.get_sweep(session, sweep_id))
