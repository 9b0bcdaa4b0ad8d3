"""The fleet for its user: list the workers, cap how many runs one takes, stop one or all.
The workers' own side (register, claim, heartbeat, ...) is the protocol in routes/workers.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from app.auth import require_api
from app.db import Database
from app.deps import get_db, get_settings
from app.protocol import STRICT_BODY, Integer
from app.routes.params import WorkerId
from app.routes.responses import API, problems
from app.schemas import FleetStopped, WorkerOut
from app.services import workers
from app.settings import Settings

router = APIRouter(prefix="/api", dependencies=[Depends(require_api)], tags=["fleet"], responses=API)

MAX_RUNS_CAP = 10_000


class WorkerCap(BaseModel):
    model_config = ConfigDict(**STRICT_BODY)
    # Spelled out as the sweeps' seeds are: on the validated Integer pydantic writes its bounds
    # as stray `ge`/`le` keys the document's readers ignore, so -1 looked valid there.
    max_runs: (
        Annotated[
            Integer,
            Field(ge=0, le=MAX_RUNS_CAP),
            WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_RUNS_CAP}),
        ]
        | None
    ) = Field(
        description=(
            "the most runs this worker claims in all (null: no cap); at the cap it finishes its run and exits"
        ),
    )


def _row(db: Database, settings: Settings, worker_id: str) -> WorkerOut:
    with db.read() as session:
        rows = {r["id"]: r for r in workers.worker_rows(session, settings.lease_seconds)}
    return WorkerOut.model_validate(rows[worker_id])


@router.get("/workers")
def list_workers(db: Database = Depends(get_db), settings: Settings = Depends(get_settings)) -> list[WorkerOut]:
    with db.read() as session:
        return [WorkerOut.model_validate(r) for r in workers.worker_rows(session, settings.lease_seconds)]


@router.patch("/workers/{worker_id}", responses=problems(404))
def cap_worker(
    worker_id: WorkerId, body: WorkerCap, db: Database = Depends(get_db), settings: Settings = Depends(get_settings)
) -> WorkerOut:
    with db.write() as session:
        workers.set_cap(session, workers.get_worker(session, worker_id), body.max_runs)
    return _row(db, settings, worker_id)


@router.post("/workers/{worker_id}/stop", responses=problems(404))
def stop_worker(
    worker_id: WorkerId, db: Database = Depends(get_db), settings: Settings = Depends(get_settings)
) -> WorkerOut:
    """Its run stops at a checkpoint and is queued again at once; the worker exits."""
    with db.write() as session:
        workers.request_stop(session, [workers.get_worker(session, worker_id)])
    return _row(db, settings, worker_id)


@router.post("/workers/stop")
def stop_fleet(db: Database = Depends(get_db)) -> FleetStopped:
    """Every worker that has not exited: their runs checkpoint and are queued again, and they
    exit (a SkyPilot managed job then ends instead of being relaunched)."""
    with db.write() as session:
        asked = workers.request_stop(session, workers.live_workers(session))
        return FleetStopped(stopped=[w.id for w in asked])
