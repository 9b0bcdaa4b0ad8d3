"""Sweeps: queue tasks × seeds × variants as ordinary runs, follow them, cancel them as one."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.auth import require_api
from app.db import Database
from app.deps import get_db
from app.protocol import MAX_INT
from app.routes.responses import API, problems
from app.services import sweeps
from app.services.claims import sweep_leases
from dlite.config import FIELDS
from dlite.tasks import TASKS

router = APIRouter(prefix="/api", dependencies=[Depends(require_api)], tags=["sweeps"], responses=API)

SweepId = Annotated[int, Path(ge=1, le=MAX_INT, description="the sweep's id")]
MAX_SEEDS = 100


class CreateSweep(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: Optional[str] = Field(None, min_length=1, max_length=80, pattern=r"^[A-Za-z0-9._-]+$",
                                description="prefix of the runs' names (their backup folders); letters, digits, . _ -")
    tasks: list[str] = Field(min_length=1, max_length=len(TASKS))
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field([0, 1, 2, 3, 4], min_length=1, max_length=MAX_SEEDS)
    variants: list[Literal["R1", "R2"]] = Field(["R1"], min_length=1, max_length=2,
                                                description="R2 runs train R1, reflow, and evaluate both")
    config: dict[str, Any] = Field({}, max_length=len(FIELDS),
                                   description="overrides shared by every run: GET /api/config/schema lists them")
    is_demo: bool = False

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


@router.post("/sweeps", status_code=201, responses=problems(409))
def create_sweep(body: CreateSweep, db: Database = Depends(get_db)) -> dict[str, Any]:
    """Queues one run per task × variant × seed; a bad override (422 naming it) queues none."""
    with db.write() as session:
        sweep = sweeps.create_sweep(session, body.name, body.tasks, body.seeds, body.variants, body.config,
                                    body.is_demo)
        return sweeps.sweep_detail(session, sweep)


@router.get("/sweeps")
def list_sweeps(db: Database = Depends(get_db)) -> list[dict[str, Any]]:
    sweep_leases(db)
    with db.read() as session:
        return sweeps.list_sweeps(session)


@router.get("/sweeps/{sweep_id}", responses=problems(404))
def get_sweep(sweep_id: SweepId, db: Database = Depends(get_db)) -> dict[str, Any]:
    """The sweep, its progress (counts by status, ETA from measured steps/s) and its runs."""
    sweep_leases(db)
    with db.read() as session:
        return sweeps.sweep_detail(session, sweeps.get_sweep(session, sweep_id))


@router.post("/sweeps/{sweep_id}/cancel", responses=problems(404))
def cancel_sweep(sweep_id: SweepId, db: Database = Depends(get_db)) -> dict[str, Any]:
    """Cancels every run of the sweep that has not ended."""
    with db.write() as session:
        return sweeps.cancel_sweep(session, sweeps.get_sweep(session, sweep_id))
