"""Executes one claimed run, stage by stage as `RunExecutor.run` calls them: data; the device
check (every attempt: the machine may have changed); the smoke test (once per run: a later
attempt skips one an earlier attempt passed); training; for R2 the reflow pairs and reflow
training; the final evaluation. Every verified checklist item, checkpoint, metric and event
goes to the server through the attempt's outbox, so a server that is down loses none of them
and the lease is kept until they are delivered."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from app.protocol import (
    CHECKLIST_KEYS,
    MAX_BODY_BYTES,
    SYSTEM_PREFIX,
    ChecklistRecord,
    ClaimResponse,
    EvaluationRequest,
    metric_point,
    plural,
    resumed_from,
)
from dlite import checkpoint, device_check
from dlite.config import Config, ConfigError, from_dict
from dlite.d4rl import DatasetError, cache_dir
from dlite.dataset import WindowDataset
from dlite.demo import demo_dataset
from dlite.evaluate import evaluate
from dlite.files import file_sha256
from dlite.model import DiffuserLite
from dlite.pipeline import load_dataset
from dlite.planner import Planner, checkpoint_model
from dlite.record import RenderUnavailable
from dlite.reflow import PairsError, PairSpec, PairStore, ReflowTrainer, load_r1
from dlite.train import LogRecord, Trainer, TrainerBase
from worker import recording
from worker.backup import METRICS_FILE, BackupError, BackupSchedule, BackupTarget, Extras, redact
from worker.backup_dir import DirectoryBackup
from worker.checkpoint_ledger import CheckpointLedger
from worker.client import ServerClient, ServerUnavailable
from worker.console import ConsoleCapture
from worker.heartbeat import Heartbeat
from worker.hub import HubBackup
from worker.outbox import Outbox
from worker.system_metrics import Sampler, SystemMonitor, interval_s

log = logging.getLogger(__name__)
EVALUATION_FIELDS = tuple(name for name in EvaluationRequest.model_fields if name != "attempt")
"""What an evaluation report carries; a replayed one is taken from the export's record."""

HubFactory = Callable[..., HubBackup]
"""Builds the run's HubBackup from (repo_id, run_key, keep_every=...); tests pass a fake Hub."""
TargetFactory = Callable[..., BackupTarget]
"""Builds one of the run's backup targets from (run_key, keep_every=...)."""


def run_key(claim: ClaimResponse) -> str:
    """The run's folder in its backup target: its name when it has one, so re-creating the same run
    on a fresh server (a new Colab VM) finds its backups; else its id."""
    if claim.name:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", claim.name).strip("-.") or f"run-{claim.run_id}"
    return f"run-{claim.run_id}"


SMOKE_KEYS = tuple(key for key in CHECKLIST_KEYS if key.startswith("smoke."))
"""The smoke test's checklist items, in order; the backup is the last."""


def earlier_smoke_test(
    checklist: list[ChecklistRecord], backs_up: bool, on_backup_failure: str
) -> ChecklistRecord | None:
    """The last item of a smoke test an earlier attempt of the run completed, or None when this
    attempt has to run it: an item is missing (that attempt died during it) or failed, this
    attempt has a backup target that one did not check, or its backup failed and the run
    says `fail` (a retry is the user asking to check again)."""
    done = {c.key: c for c in checklist}
    items = [done.get(key) for key in (SMOKE_KEYS if backs_up else SMOKE_KEYS[:-1])]
    if any(i is None or (i.failed and not (i.key == "smoke.backup" and on_backup_failure == "warn")) for i in items):
        return None
    return items[-1]


class RunStopped(Exception):
    """Training stopped early: SIGTERM, a cancel command, or a lost lease."""


class Diverged(Exception):
    """A logged loss was NaN or infinite and the run's `on_nonfinite` is 'stop'."""


class DataUnavailable(Exception):
    """The run's dataset cannot be fetched or read: its checklist item says what to do."""


class SmokeBackupFailed(Exception):
    """The smoke test could not back up and the run's `on_backup_failure` is 'fail'."""


class RunExecutor:
    def __init__(
        self,
        client: ServerClient,
        claim: ClaimResponse,
        work_dir: Path,
        device: str,
        hub_factory: HubFactory | None,
        terminate: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.claim, self.device = client, claim, device
        self.cfg: Config = from_dict(claim.config)
        # keyed by the server's run UUID: a fresh database starts run ids at 1 again, and a
        # work dir that outlived it must not hand this run another run's outbox or checkpoints
        self.run_dir = work_dir / "runs" / claim.run_uuid
        foreign = work_dir / "runs" / str(claim.run_id)
        if foreign.is_dir():
            log.warning(
                "%s holds the state of an earlier run %s (another server database or an older "
                "worker); it is not used for run %s (UUID %s); delete it when it is no longer needed",
                foreign,
                claim.run_id,
                claim.run_id,
                claim.run_uuid,
            )
        self.terminate = terminate
        self.cancelled = threading.Event()
        self.stop_command: int | None = None
        """The dashboard's stop command, once one came: the run is handed back, the worker exits."""
        self.outbox = Outbox(client, claim.run_id, claim.attempt, self.run_dir)
        self.heartbeat = Heartbeat(client, claim.run_id, claim.attempt, claim.lease_seconds, self._on_command)
        self.smoke_target: BackupTarget | None = None
        self.backup_unreachable = False
        """The smoke test could not back up and on_backup_failure is 'warn': backups are still
        tried (and their errors shown), but failing to read the storage stops nothing."""
        self._make_target = self._target_factory(hub_factory)
        self.ledger = self._ledger(self.run_dir / "checkpoints", run_key(claim), after=-1, upto=self.cfg.total_steps)
        """The checkpoints of the stage training now: R1's, then R2's reflow (`_enter_reflow`)."""
        if self._make_target:  # the smoke test's backup lives apart, so a resume can never pick up its weights
            self.smoke_target = self._make_target(f"{run_key(claim)}-smoke-test", keep_every=1)
        self.schedule = BackupSchedule(self.cfg.backup_every, self.cfg.backup_every_minutes, clock)
        self.trainer: TrainerBase[Any] | None = None
        self.paths = {"train": "eager", "plan": "eager"}
        """The training and planning paths the device check chose."""
        self.diverged: str | None = None
        self.warned_nonfinite = False
        self.console = ConsoleCapture(partial(self.outbox.post, "console"))
        self.monitor: SystemMonitor | None = None

    def _target_factory(self, hub_factory: HubFactory | None) -> TargetFactory | None:
        """Where the run backs up: its backup_dir, else its hub_repo (the default), else nowhere."""
        if self.cfg.backup_dir:
            return partial(DirectoryBackup, self.cfg.backup_dir)
        if hub_factory and self.cfg.hub_repo:
            return partial(hub_factory, self.cfg.hub_repo)
        return None

    def _ledger(self, folder: Path, backup_key: str, after: int, upto: int | None) -> CheckpointLedger:
        """A stage's ledger; its backups go to `runs/<backup_key>/` of the run's storage."""
        target = self._make_target(backup_key, keep_every=self.cfg.keep_every) if self._make_target else None
        return CheckpointLedger(
            folder,
            target,
            after=after,
            upto=upto,
            post=self.outbox.post,
            event=self.event,
            listed=lambda: self.client.run(self.claim.run_id)["checkpoints"],
            extras=self._extras,
            label=f"run {self.claim.run_id}",
            unreachable=lambda: self.backup_unreachable,
        )

    # -- reporting -------------------------------------------------------
    def event(self, message: str, level: str = "info") -> None:
        message = redact(message)  # tracebacks of Hub calls may quote a token
        log.log(logging.ERROR if level == "error" else logging.INFO, "run %s: %s", self.claim.run_id, message)
        self.outbox.post("events", {"level": level, "message": message})

    def verified(self, key: str, detail: str | None = None, failed: bool = False) -> None:
        self.outbox.post("checklist", {"key": key, "detail": detail, "failed": failed})

    def stage(self, name: str) -> None:
        self.outbox.post("stage", {"stage": name})

    def _start_reporting(self) -> None:
        """The console and the system metrics, for as long as the run is this worker's."""
        self.console.attach()
        interval = interval_s()
        sampler = Sampler(self.device, self.run_dir)
        self.monitor = SystemMonitor(sampler, self.outbox.metrics, interval)
        self.monitor.start()
        reasons: dict[str, list[str]] = {}
        for key, why in sampler.missing.items():
            reasons.setdefault(why, []).append(key.removeprefix(SYSTEM_PREFIX))
        self.event(
            f"system metrics every {interval:g} s"
            + "".join(f"; {', '.join(keys)}: {why}" for why, keys in reasons.items())
        )

    def _stop_reporting(self) -> None:
        """Before the run's last write: the server refuses writes to a finished run."""
        if self.monitor:
            self.monitor.stop()
        self.console.detach()

    def lost(self) -> bool:
        return self.heartbeat.lost.is_set() or self.outbox.lost.is_set()

    def _on_command(self, command_id: int, kind: str) -> None:
        if kind == "cancel":
            self.event("cancel requested from the dashboard")
            self.cancelled.set()
        elif kind == "backup":
            self._backup_now(command_id)
        elif kind == "stop":
            self.event(
                "stop requested from the dashboard: training stops at its next step with a checkpoint, "
                "which is backed up; then the run is queued again and this worker exits"
            )
            self.stop_command = command_id
            self.terminate.set()  # as SIGTERM: the worker takes no next run

    def _backup_now(self, command_id: int | None) -> None:
        if self.ledger.back_up_newest(command_id):
            self.schedule.backed_up()

    def _extras(self) -> Extras:
        """The metrics export and the figures; the weights matter more, so a failure here
        only leaves them out of this backup."""
        extras: Extras = {}
        self.outbox.flush(timeout=60)  # the export should hold what training has logged so far
        try:
            extras[METRICS_FILE] = self.client.export(self.claim.run_id)
            extras.update({f"figures/{name}": png for name, png in self.client.figures(self.claim.run_id).items()})
            extras.update(
                {f"{recording.FOLDER}/{path.name}": path.read_bytes() for path in recording.files(self.run_dir)}
            )
        except Exception as e:
            log.warning("metrics export or figures for the backup failed: %s", e)
        return extras

    # -- stages ----------------------------------------------------------
    def run(self) -> str:
        """Runs every stage; returns the final status sent (or 'stopped' / 'lost')."""
        self._start_reporting()
        try:
            data = self.stage_data()
            self.stage_check(data)
            self.stage_smoke(data)
            finals = {"R1": self.stage_train(data)}
            if self.cfg.variant == "R2":
                store, r1, r1_step = self.stage_reflow_pairs(data, finals["R1"])
                finals["R2"] = self.stage_reflow_train(data, store, r1, r1_step)
            self.stage_eval(finals)
            return self.finish("succeeded")
        except (Diverged, DataUnavailable, SmokeBackupFailed, device_check.DeviceCheckError) as e:
            return self.finish("failed", str(e))
        except RunStopped as e:
            if self.cancelled.is_set() and not self.lost():
                return self.finish("cancelled")
            self.event(f"worker stopped: {e}", "warning")
            if self.stop_command is not None and not self.lost():
                return self._hand_back()
            return "lost" if self.lost() else "stopped"
        except Exception as e:
            self.event("".join(traceback.format_exception(e))[-4000:], "error")
            return self.finish("failed", f"{type(e).__name__}: {e}")
        finally:
            self._drain_backups()
            self._stop_reporting()
            self._deliver_backlog()
            self.heartbeat.stop()

    def _deliver_backlog(self) -> None:
        """Keep the lease until the server has every write of this attempt.

        A run that ended while the server was down holds its points and its finish in the
        outbox; were the heartbeat stopped first, the restarted server would requeue the run
        before the backlog arrives, and it would train again as a new attempt. Only a stop
        (SIGTERM) or a lost lease bounds the wait: the journal stays on disk either way.
        """
        while not self.outbox.flush(timeout=1.0):
            if self.terminate.is_set() or self.lost():
                break
        self.outbox.close(timeout=60)

    def _drain_backups(self) -> None:
        """Wait for the last upload: its state updates must reach the server."""
        if not self.ledger.close(timeout=300):
            log.warning("run %s: the last backup is still running", self.claim.run_id)

    def _hand_back(self) -> str:
        """Stopped from the dashboard: back up the newest checkpoint, so any worker can resume
        it, then report the stop done, which queues the run again at once (the last write:
        the attempt ends there)."""
        self._backup_now(None)
        self._drain_backups()
        self._stop_reporting()
        self.outbox.post(f"commands/{self.stop_command}", {"state": "done", "detail": "stopped at a checkpoint"})
        return "stopped"

    def finish(self, status: str, error: str | None = None) -> str:
        """The run's last write: pending backups report first, as the run is closed after it."""
        self._drain_backups()
        self._stop_reporting()
        self.outbox.post("finish", {"status": status, "error": error and redact(error)})
        return status

    def stage_data(self) -> WindowDataset:
        self.stage("data")
        if self.claim.is_demo:
            dataset = str(demo_dataset())
        else:
            dataset = self.cfg.task
        shown = [0]

        def progress(done: int, total: int | None) -> None:
            if total and done * 10 // total > shown[0]:
                shown[0] = done * 10 // total
                self.event(f"downloading {dataset}: {done / 1e6:.0f} of {total / 1e6:.0f} MB")

        try:
            data = load_dataset(dataset, self.cfg, self.device, progress)
        except (DatasetError, ConfigError) as e:
            detail = (
                f"{e}. Next: on the worker's machine, put the task's D4RL file in {cache_dir()} (or point "
                f"DLITE_DATASETS at the folder that holds it), or fix the run's task with Clone and edit; "
                f"then retry the run"
            )
            self.outbox.post("checklist", {"key": "data.ready", "detail": detail, "failed": True})
            raise DataUnavailable(detail) from e
        self.verified("data.ready", f"{plural(data.n_episodes, 'episode')}, {plural(int(data.lengths.sum()), 'step')}")
        return data

    def stage_check(self, data: WindowDataset) -> None:
        """Verify and time every path this run may use on this machine, and use the fastest that
        passed. A refused path is a warning naming it and its fallback; only an explicit
        train_accel/plan_accel that cannot run here fails the run, before it trains."""
        self.stage("check")
        try:
            report = device_check.run_check(
                self.cfg,
                data,
                journal_file=self.run_dir / device_check.JOURNAL_FILE,
                resumes=self._resumed_path(),
                progress=lambda line: self.event(f"device check: {line}"),
            )
        except device_check.DeviceCheckError as e:
            self.outbox.post("checklist", {"key": "device.check", "detail": str(e), "failed": True})
            raise
        self.outbox.post("device-check", report.to_dict())
        self.paths = dict(report.chosen)
        for path in report.refused():
            self.event(
                f"device check: {path.stage} path {path.name} refused ({path.detail}); "
                f"using {report.chosen[path.stage]} instead",
                "warning",
            )
        self.verified("device.check", report.summary())

    def _resumed_path(self) -> str | None:
        """The training path of the checkpoint this attempt resumes from on this disk (reflow's,
        else R1's): kept when it passes the check, so the run goes on bit-exactly."""
        for folder in (self.run_dir / "reflow" / "checkpoints", self.run_dir / "checkpoints"):
            found = checkpoint.newest_readable(folder)
            if found:
                return found[1].get("train_path")
        return None

    def planner(self, model: DiffuserLite, cfg: Config, variant: str) -> Planner:
        """A planner on the path the device check chose."""
        return device_check.planner_for(self.paths["plan"], model, cfg, variant)  # type: ignore[arg-type]

    def stage_smoke(self, data: WindowDataset) -> None:
        passed = earlier_smoke_test(self.claim.checklist, self.smoke_target is not None, self.cfg.on_backup_failure)
        if passed:
            self._skip_smoke(passed)
            return
        self.stage("smoke")
        n = self.cfg.smoke_steps
        smoke_cfg = self.cfg.replace(
            diffusion_gradient_steps=n,
            invdyn_gradient_steps=n,
            save_interval=n,
            log_interval=min(self.cfg.log_interval, n),
        )
        scratch = self.run_dir / "smoke"
        shutil.rmtree(scratch, ignore_errors=True)
        trainer = Trainer(smoke_cfg, data, scratch, self.paths["train"])
        trainer.fit(callbacks=(self._Stopper(self),))
        if trainer.step < n:
            raise RunStopped(f"stopped during the smoke test at step {trainer.step}")
        self.verified("smoke.steps", plural(n, "step"))
        path = scratch / checkpoint.checkpoint_name(n)
        if not path.exists():
            raise RuntimeError(f"smoke test: no checkpoint at {path}")
        self.verified("smoke.checkpoint", f"{path.stat().st_size / 1e6:.1f} MB")
        reloaded = Trainer(smoke_cfg, data, scratch, self.paths["train"])
        reloaded.resume_latest()
        for (key, a), b in zip(trainer.model.state_dict().items(), reloaded.model.state_dict().values()):
            if not torch.equal(a, b):
                raise RuntimeError(f"smoke test: reloaded weights differ at {key}")
        actions = self.planner(reloaded.model, smoke_cfg, "R1").act(data.normalizer.mean[None])
        if actions.shape != (1, data.act_dim):
            raise RuntimeError(f"smoke test: planner returned shape {actions.shape}")
        self.verified("smoke.reload", "weights equal, one planning call works")
        if self.smoke_target:
            try:
                self.smoke_target.prepare()
                result = self.smoke_target.backup(path, n, {})
            except Exception as e:  # unreachable, refused, misconfigured: the run's backups would not work
                self._smoke_backup_failed(e)
            else:
                self.verified("smoke.backup", result.url)
        else:
            self.event("smoke test: backup skipped: no hub_repo or backup_dir in the run's config", "warning")
        shutil.rmtree(scratch, ignore_errors=True)

    def _skip_smoke(self, passed: ChecklistRecord) -> None:
        """An earlier attempt passed it (its items stay ✓ on the dashboard); training's resume
        checks that the checkpoint loads. If that smoke test's backup failed (tolerated, as
        on_backup_failure=warn), the storage counts as unreachable now as it did then."""
        self.backup_unreachable = passed.failed
        when = f"attempt {passed.attempt}" if passed.attempt else "an earlier attempt"
        self.event(
            f"smoke test passed in {when}: skipped"
            + (
                "; its backup failed, so training goes on without working backups (on_backup_failure=warn)"
                if self.backup_unreachable
                else ""
            ),
            "warning" if self.backup_unreachable else "info",
        )

    def _smoke_backup_failed(self, error: Exception) -> None:
        """Says what failed and what to do next, ticks the item ✗, and stops the run unless its
        config says to train on without backups (on_backup_failure=warn)."""
        assert self.smoke_target is not None  # only a smoke test with a backup target backs up
        what = redact(str(error) if isinstance(error, BackupError) else f"{type(error).__name__}: {error}")[:2000]
        stop = self.cfg.on_backup_failure == "fail"
        detail = (
            f"the backup to {self.smoke_target.where()} failed: {what}. Next: check that this machine "
            "reaches it and that the credentials may write there, then retry the run"
            + (
                ", or set on_backup_failure=warn to train without backups"
                if stop
                else "; training goes on without working backups (on_backup_failure=warn)"
            )
        )
        self.outbox.post("checklist", {"key": "smoke.backup", "detail": detail, "failed": True})
        if stop:
            raise SmokeBackupFailed(f"smoke test: {detail}")
        self.backup_unreachable = True
        self.event(f"smoke test: {detail}", "warning")

    class _Stopper:
        def __init__(self, ex: RunExecutor) -> None:
            self.ex = ex

        def on_log(self, record: LogRecord) -> None:
            pass

        def on_checkpoint(self, step: int, path: Path) -> None:
            pass

        def should_stop(self) -> bool:
            return self.ex.terminate.is_set() or self.ex.cancelled.is_set() or self.ex.lost()

    def _restore(self, trainer: TrainerBase[Any]) -> str:
        def skipped(path: Path, e: checkpoint.CheckpointError) -> None:
            aside = path.with_name(path.name + ".broken")  # out of the checkpoint list: never reported or retried
            path.replace(aside)
            self.event(f"skipped a broken checkpoint on resume: {e}; moved aside to {aside.name}", "warning")

        resumed = trainer.resume_latest(on_skip=skipped)
        if resumed:
            return resumed_from(trainer.step, "local checkpoint")
        target, folder = self.ledger.target, self.ledger.folder
        if target:
            try:
                restored = target.restore_latest(folder, {recording.FOLDER: self.run_dir / recording.FOLDER})
            except Exception as e:  # the smoke test found the storage unreachable and the run said warn
                if not self.backup_unreachable:
                    raise
                self.event(f"no resume from {target.where()}: {type(e).__name__}: {e}", "warning")
                restored = None
            if restored and trainer.resume_latest(on_skip=skipped):
                self._replay_backup(folder / METRICS_FILE, trainer.step)
                self._upload_restored(trainer.step)
                return resumed_from(trainer.step, target.description)
        return "started fresh"

    def _replay_backup(self, export: Path, upto: int, batch: int = 10_000) -> None:
        """A fresh server (a new Colab VM), or one restored from a snapshot older than this
        checkpoint, gets the curves back from the backup's export, the non-finite points too,
        and the evaluations it lacks; what lies past the checkpoint is left out, training
        will log it again. Metric ingest is idempotent per step, so nothing doubles."""
        if not export.exists():
            return
        saved = json.loads(export.read_bytes())
        series = [
            (key, step, float(value), wall)
            for name in ("metrics", "nonfinite_metrics")
            for key, rows in saved.get(name, {}).items()
            for step, value, wall in rows
        ]
        points = [
            metric_point(key, step, value, wall)
            for key, step, value, wall in series
            if step <= upto or key.startswith(SYSTEM_PREFIX)
        ]  # a system point's step is its second
        for i in range(0, len(points), batch):
            self.outbox.post("metrics", {"points": points[i : i + batch]})
        try:
            known = {(e["step"], e["kind"], e["variant"]) for e in self.client.run(self.claim.run_id)["evaluations"]}
        except ServerUnavailable as e:  # post them all: an evaluation is an upsert, the outbox retries
            log.warning("run %s: the server's evaluations are unknown (%s); replaying all", self.claim.run_id, e)
            known = set()
        for evaluation in saved.get("evaluations", []):
            key = (evaluation["step"], evaluation["kind"], evaluation["variant"])
            if key[0] <= upto and key not in known:
                self.outbox.post("evaluations", {k: evaluation.get(k) for k in EVALUATION_FIELDS})

    def _upload_restored(self, upto: int) -> None:
        """The videos and plans the restore brought back go to the server again, after the
        evaluations they belong to: a fresh server (a new Colab VM) has none of them. Those it
        holds with the same bytes are left out; an upload replaces by name, so nothing doubles."""
        try:
            held = {a["name"]: a["sha256"] for a in self.client.run(self.claim.run_id)["artifacts"]}
        except ServerUnavailable as e:  # upload them all: the outbox retries
            log.warning("run %s: the server's artifacts are unknown (%s); uploading all", self.claim.run_id, e)
            held = {}
        for path in recording.restored(self.run_dir, upto):
            if held.get(path.name) != file_sha256(path)[0]:
                self.outbox.upload(path.name, path, recording.content_type(path))

    def stage_train(self, data: WindowDataset) -> Path:
        self.stage("train")
        trainer = self.trainer = Trainer(self.cfg, data, self.ledger.folder, self.paths["train"])
        trainer.protected = self.ledger.in_use
        how = self._restore(trainer)
        self.ledger.reconcile()
        self.verified("train.start", how)
        self.event(
            f"training {how}, to step {self.cfg.total_steps} on {self.device} "
            f"(training path {self.paths['train']}, planning path {self.paths['plan']})"
        )
        return self._fit(trainer, "train.done", "step")

    def _fit(self, trainer: TrainerBase[Any], done_key: str, what: str) -> Path:
        """Train to the trainer's end (R1 or reflow) and return its final checkpoint, or
        raise when the run diverged or was stopped before the end."""
        trainer.fit(callbacks=(self._TrainReporter(self),))
        if self.diverged:
            raise Diverged(self.diverged)
        if trainer.step < trainer.total_steps:
            raise RunStopped(f"stopped at {what} {trainer.step}; checkpoint saved")
        self.verified(done_key, f"step {trainer.step}")
        return self.ledger.folder / checkpoint.checkpoint_name(trainer.step)

    class _TrainReporter(_Stopper):
        def on_log(self, record: LogRecord) -> None:
            ex = self.ex
            ex.heartbeat.step, ex.heartbeat.steps_per_s = record.step, record.steps_per_s
            ex.outbox.metrics(
                record.step, {**record.losses, "lr": record.lr, "steps_per_s": record.steps_per_s}, record.wall_time
            )
            bad = {k: v for k, v in record.losses.items() if not math.isfinite(v)}
            if bad:
                ex.nonfinite_loss(record.step, bad)
                return
            cfg = ex.cfg
            assert ex.trainer is not None  # it is the trainer being fit
            trainer = ex.trainer
            if cfg.eval_every and record.step % cfg.eval_every == 0 and record.step < trainer.total_steps:
                ex.report_evaluation(
                    ex.planner(trainer.model, cfg, trainer.variant),
                    record.step,
                    "quick",
                    cfg.eval_envs,
                    cfg.eval_episodes,
                )
                ex.trainer.model.train()
            if ex.ledger.backs_up and ex.schedule.time_due():
                ex.trainer.request_save()  # on_checkpoint backs it up: the schedule is due

        def should_stop(self) -> bool:
            return super().should_stop() or self.ex.diverged is not None

        def on_checkpoint(self, step: int, path: Path) -> None:
            ex = self.ex
            if ex.diverged:  # diverged weights: a retry resumes from the newest finite checkpoint instead
                path.unlink(missing_ok=True)
                return
            ex.ledger.saved(step, path)
            if ex.ledger.backs_up and ex.schedule.due(step):
                ex._backup_now(None)

    def nonfinite_loss(self, step: int, values: dict[str, float]) -> None:
        """Stop with the step and losses named, or warn once and go on, as the run's config says."""
        what = ", ".join(f"{k} = {v}" for k, v in sorted(values.items()))
        if self.cfg.on_nonfinite == "stop":
            self.diverged = (
                f"loss became non-finite at step {step} ({what}); training stopped (on_nonfinite=stop). "
                f"Retry with a lower learning rate, or set on_nonfinite=continue to train on"
            )
            self.event(self.diverged, "error")
        elif not self.warned_nonfinite:
            self.warned_nonfinite = True
            self.event(
                f"loss became non-finite at step {step} ({what}); training goes on (on_nonfinite=continue)", "warning"
            )

    def report_evaluation(
        self, planner: Planner, step: int, kind: str, n_envs: int, n_episodes: int
    ) -> tuple[float, bool]:
        """Evaluate with the EMA weights; seeds differ from training's so scores are held out.
        Returns the score and whether an episode of it was recorded (record_episode)."""
        result = evaluate(planner, n_envs, n_episodes, seed=self.cfg.seed + 10_000)
        self.outbox.post(
            "evaluations",
            {
                "step": step,
                "kind": kind,
                "variant": result.variant,
                "score_mean": result.score_mean,
                "score_std": result.score_std,
                "returns": result.returns,
                "scores": result.scores,
                "n_envs": n_envs,
                "n_episodes": n_episodes,
                "latency_ms": result.latency_ms,
                "latency_ms_1env": result.latency_ms_1env,
                "device": result.device,
            },
        )
        self.outbox.metrics(step, {"score": result.score_mean}, time.time())
        recorded = recording.wanted(self.cfg, step, kind) and self.record_episode(planner, step, kind)
        return result.score_mean, recorded

    def record_episode(self, planner: Planner, step: int, kind: str) -> bool:
        """One extra episode as a video with its plans, uploaded through the outbox. A machine
        that cannot render gets a warning with the fix (a ✗ on the checklist for a final
        evaluation), never a failed run; rendering is timed apart from planning."""
        try:
            rec = recording.record(planner, self.cfg, step, kind, self.run_dir)
        except RenderUnavailable as e:
            if kind == "final":
                self.verified("eval.video", f"not recorded: {e}", failed=True)
            self.event(f"no video of the {kind} {planner.variant} evaluation at step {step}: {e}", "warning")
            return False
        if not recording.fits(rec.video):
            self.event(
                f"the video of step {step} is {rec.video.stat().st_size / 2**20:.1f} MiB, over the server's "
                f"{MAX_BODY_BYTES / 2**20:.0f} MiB: kept in the backups only",
                "warning",
            )
        for path in (rec.video, rec.plans):
            if recording.fits(path):
                self.outbox.upload(path.name, path, recording.content_type(path))
        self.event(
            f"recorded an extra {planner.variant} episode of step {step} ({kind}): {rec.steps} steps, "
            f"score {rec.score:.1f} (not counted in the evaluation); rendering {rec.render_s:.1f} s, "
            f"encoding {rec.encode_s:.1f} s, planning {rec.plan_s:.1f} s"
        )
        return True

    def stage_reflow_pairs(self, data: WindowDataset, r1_path: Path) -> tuple[PairStore, DiffuserLite, int]:
        """R2's pairs from the final R1 model, kept on local disk only (GBs, never backed up):
        a resumed run reuses what is there, a fresh machine regenerates the same pairs."""
        self.stage("reflow_pairs")
        state = checkpoint.read(r1_path, self.device)
        r1 = load_r1(state, self.cfg, data, r1_path)
        folder = self.run_dir / "reflow" / "pairs"
        spec = PairSpec.of(self.cfg, r1, data)
        try:
            store = PairStore(folder, spec)
        except PairsError as e:
            self.event(f"{e}: regenerating them", "warning")
            shutil.rmtree(folder)
            store = PairStore(folder, spec)
        found = store.pairs_done
        per_level = plural(spec.total, "pair")
        if not store.complete:
            self.event(
                f"generating {per_level} per level from the R1 model at step {state['step']} "
                + (f"(resuming: {found} already on disk)" if found else "(none on disk yet)")
            )
            shown = [-1]

            def progress(level: int, done: int, total: int) -> None:
                tenth = (level * total + done) * 10 // (total * len(spec.horizons))
                if tenth > shown[0]:
                    shown[0] = tenth
                    self.event(f"reflow pairs: level {level}, {done} of {total}")

            if not store.generate(r1, data, progress, self._Stopper(self).should_stop):
                raise RunStopped(f"stopped while generating reflow pairs; {store.pairs_done} kept on disk")
        self.verified("reflow.pairs", "found on disk" if found == store.pairs_done else "generated")
        return store, r1, state["step"]

    def _enter_reflow(self, r1_step: int) -> None:
        """From here on checkpoints are R2's: their own folder, and their own backup folder
        beside R1's (`<run>-reflow`), so a resume never mixes the two; their steps continue
        R1's. R1's final checkpoint is backed up first whatever the schedule says: a fresh
        machine must find the exact R1 weights the pairs came from (and that were scored)."""
        r1 = self.ledger
        if r1.backs_up:
            self._backup_now(None)
        # the new queue takes dashboard commands while R1's drains
        self.ledger = self._ledger(
            self.run_dir / "reflow" / "checkpoints", f"{run_key(self.claim)}-reflow", after=r1_step, upto=None
        )
        if not r1.close(timeout=300):
            log.warning("run %s: R1's last backup is still running", self.claim.run_id)

    def stage_reflow_train(self, data: WindowDataset, store: PairStore, r1: DiffuserLite, r1_step: int) -> Path:
        self.stage("reflow_train")
        self._enter_reflow(r1_step)
        ledger = self.ledger
        trainer = self.trainer = ReflowTrainer(self.cfg, data, store, r1, r1_step, ledger.folder, self.paths["train"])
        trainer.protected = ledger.in_use
        how = self._restore(trainer)
        ledger.reconcile()
        self.event(f"reflow {how}, to step {trainer.total_steps} on {self.device}")
        return self._fit(trainer, "reflow.done", "reflow step")

    def stage_eval(self, finals: dict[str, Path]) -> None:
        """The final evaluation of every variant the run trained (R1, and R2 after reflow)."""
        self.stage("eval")
        cfg = self.cfg
        scores, videos = {}, {}
        for variant, final in finals.items():
            planner = self.planner(*checkpoint_model(final, self.device))
            step = checkpoint.step_of(final)
            assert step is not None  # a final checkpoint is named by its step
            scores[variant], videos[variant] = self.report_evaluation(
                planner, step, "final", cfg.num_envs, cfg.num_episodes
            )
        episodes = f"{plural(cfg.num_envs, 'env')} × {plural(cfg.num_episodes, 'episode')}"
        shown = ", ".join(f"{variant} {score:.1f}" for variant, score in scores.items())
        self.verified("eval.done", episodes)
        self.verified("eval.score", shown)
        if any(videos.values()):
            self.verified("eval.video", ", ".join(v for v, done in videos.items() if done))
        self.event(f"final normalised score {shown} ({episodes})")
        if self.ledger.backs_up:
            self._backup_now(None)
