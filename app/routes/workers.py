"""The worker protocol (docs/worker-protocol.md). Every write after the claim carries
the attempt it belongs to and is checked by `claims.fenced_run` (409 when stale)."""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter, BackgroundTasks, Depends, Response

from app import protocol as p
from app.auth import require_api
from app.db import Database
from app.deps import get_db, get_settings
from app.models import stored_id
from app.routes.params import CommandId, RunId, WorkerId
from app.routes.responses import API, Problem, problems
from app.services import Conflict, claims, figures, metrics, progress, runs
from app.services import workers as fleet
from app.services.console import append_lines
from app.services.events import log_event
from app.settings import Settings

router = APIRouter(prefix="/api", dependencies=[Depends(require_api)], tags=["workers"], responses=API)


@router.post("/workers/register")
def register(body: p.RegisterRequest, db: Database = Depends(get_db)) -> p.RegisterResponse:
    with db.write() as session:
        worker = claims.register_worker(session, body.name, body.host, body.device, body.gpu_name, body.provider)
        return p.RegisterResponse(worker_id=worker.id)


@router.post("/workers/{worker_id}/exit", responses=problems(404))
def exit_(worker_id: WorkerId, db: Database = Depends(get_db)) -> p.Ok:
    """The worker is going away on purpose (SIGTERM, its --max-runs): the fleet shows it exited, not lost."""
    with db.write() as session:
        fleet.mark_exited(session, fleet.get_worker(session, worker_id))
        return p.Ok()


@router.post(
    "/workers/{worker_id}/claim",
    response_model=p.ClaimResponse,
    responses={
        204: {"description": "nothing is queued"},
        410: {
            "model": Problem,
            "description": "the worker takes no more runs (the user stopped it, or it claimed its cap): it should exit",
        },
        **problems(404),
    },
)
def claim(
    worker_id: WorkerId, db: Database = Depends(get_db), settings: Settings = Depends(get_settings)
) -> p.ClaimResponse | Response:
    run = claims.claim_next(db, worker_id, settings.lease_seconds)
    if run is None:
        return Response(status_code=204)
    assert run.id is not None and run.lease_expires_at is not None  # a claimed run is stored and leased
    with db.read() as session:
        checklist = [
            p.ChecklistRecord(key=i.key, failed=i.failed, attempt=i.attempt)
            for i in runs.checklist_items(session, run.id)
        ]
    return p.ClaimResponse(
        run_id=run.id,
        run_uuid=run.uuid,
        attempt=run.attempt,
        task=run.task,
        name=run.name,
        config=run.config,
        lease_seconds=settings.lease_seconds,
        lease_expires_at=run.lease_expires_at,
        is_demo=run.is_demo,
        checklist=checklist,
    )


@router.post("/runs/{run_id}/heartbeat", responses=problems(404, 409))
def heartbeat(
    run_id: RunId, body: p.HeartbeatRequest, db: Database = Depends(get_db), settings: Settings = Depends(get_settings)
) -> p.HeartbeatResponse:
    with db.write() as session:
        run = claims.fenced_run(session, run_id, body.attempt)
        commands = claims.heartbeat(session, run, body.step, body.steps_per_s, settings.lease_seconds)
        assert run.lease_expires_at is not None  # heartbeat extends the lease of a running attempt
        return p.HeartbeatResponse(
            lease_expires_at=run.lease_expires_at,
            commands=[p.CommandOut(id=stored_id(c), kind=cast(p.CommandKind, c.kind)) for c in commands],
        )


@router.post("/runs/{run_id}/metrics", responses=problems(404, 409))
def post_metrics(run_id: RunId, body: p.MetricsRequest, db: Database = Depends(get_db)) -> p.MetricsResponse:
    """Points of an attempt that was fenced off are not refused: they fill steps the run has
    no point for (the next attempt never logs the steps before its checkpoint again) and
    never overwrite one (docs/worker-protocol.md, "Late points of a fenced-off attempt")."""
    with db.write() as session:
        try:
            run, stale = claims.fenced_run(session, run_id, body.attempt), False
        except Conflict:
            run, stale = claims.earlier_attempt_run(session, run_id, body.attempt), True
        n = metrics.upsert_points(session, run_id, (pt.model_dump() for pt in body.points), fill_only=stale)
        steps = [pt.step for pt in body.points if not pt.key.startswith(p.SYSTEM_PREFIX)]  # theirs are seconds
        if steps and not stale:
            progress.note_logged_step(session, run, max(steps))
        return p.MetricsResponse(accepted=n, stale=stale)


@router.post("/runs/{run_id}/stage", responses=problems(404, 409))
def stage(run_id: RunId, body: p.StageRequest, db: Database = Depends(get_db)) -> p.Ok:
    with db.write() as session:
        claims.set_stage(session, claims.fenced_run(session, run_id, body.attempt), body.stage)
        return p.Ok()


@router.post("/runs/{run_id}/checklist", responses=problems(404, 409))
def checklist(run_id: RunId, body: p.ChecklistRequest, db: Database = Depends(get_db)) -> p.Ok:
    with db.write() as session:
        run = claims.fenced_run(session, run_id, body.attempt)
        progress.verify_checklist(session, run, body.key, body.detail, body.failed)
        return p.Ok()


@router.post("/runs/{run_id}/device-check", responses=problems(404, 409))
def device_check(run_id: RunId, body: p.DeviceCheckRequest, db: Database = Depends(get_db)) -> p.Ok:
    with db.write() as session:
        run = claims.fenced_run(session, run_id, body.attempt)
        progress.record_device_check(session, run, body.model_dump())
        return p.Ok()


@router.post("/runs/{run_id}/checkpoints", responses=problems(404, 409))
def checkpoint(run_id: RunId, body: p.CheckpointRequest, db: Database = Depends(get_db)) -> p.Ok:
    with db.write() as session:
        run = claims.fenced_run(session, run_id, body.attempt)
        progress.record_checkpoint(session, run, body.model_dump(exclude={"attempt"}, exclude_unset=True))
        return p.Ok()


@router.post("/runs/{run_id}/evaluations", responses=problems(404, 409))
def evaluation(
    run_id: RunId,
    body: p.EvaluationRequest,
    background: BackgroundTasks,
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings),
) -> p.Ok:
    with db.write() as session:
        run = claims.fenced_run(session, run_id, body.attempt)
        progress.record_evaluation(session, run, body.model_dump(exclude={"attempt"}))
    if body.kind == "final":  # the README figures are ready once the score is in
        background.add_task(figures.write_run_figures, db, settings.data_dir, run_id)
    return p.Ok()


@router.post("/runs/{run_id}/events", responses=problems(404, 409))
def event(run_id: RunId, body: p.EventRequest, db: Database = Depends(get_db)) -> p.Ok:
    with db.write() as session:
        claims.fenced_run(session, run_id, body.attempt)
        log_event(session, run_id, body.level, body.message)
        return p.Ok()


@router.post("/runs/{run_id}/console", responses=problems(404, 409))
def console(run_id: RunId, body: p.ConsoleRequest, db: Database = Depends(get_db)) -> p.Ok:
    with db.write() as session:
        run = claims.fenced_run(session, run_id, body.attempt)
        append_lines(session, run, [line.model_dump() for line in body.lines])
        return p.Ok()


@router.post("/runs/{run_id}/commands/{command_id}", responses=problems(404, 409))
def command(run_id: RunId, command_id: CommandId, body: p.CommandUpdateRequest, db: Database = Depends(get_db)) -> p.Ok:
    with db.write() as session:
        run = claims.fenced_run(session, run_id, body.attempt)
        claims.update_command(session, run, command_id, body.state, body.detail)
        return p.Ok()


@router.post("/runs/{run_id}/finish", responses=problems(404, 409))
def finish(run_id: RunId, body: p.FinishRequest, db: Database = Depends(get_db)) -> p.Ok:
    with db.write() as session:
        claims.finish(session, claims.fenced_run(session, run_id, body.attempt), body.status, body.error)
        return p.Ok()
