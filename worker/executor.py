"""Executes one claimed run: data, stage 0 smoke test, stage 1 training, stage 2
evaluation, reporting every verified checklist item to the server."""

from __future__ import annotations

import json
import re
import logging
import shutil
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from app.protocol import ClaimResponse
from dlite import checkpoint
from dlite.config import Config, from_dict
from dlite.dataset import WindowDataset
from dlite.demo import demo_dataset
from dlite.evaluate import evaluate
from dlite.pipeline import load_dataset
from dlite.planner import Planner
from dlite.train import LogRecord, Trainer
from worker.client import ServerClient
from worker.heartbeat import Heartbeat
from worker.hub import METRICS_FILE, BackupQueue, HubBackup, file_sha256, redact
from worker.outbox import Outbox

log = logging.getLogger(__name__)

HubFactory = Callable[..., HubBackup]
"""Builds the run's HubBackup from (repo_id, run_key, keep_every=...); tests pass a fake Hub."""


def run_key(claim: ClaimResponse) -> str:
    """The run's folder on the Hub: its name when it has one, so re-creating the same run
    on a fresh server (a new Colab VM) finds its backups; else its id."""
    if claim.name:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", claim.name).strip("-.") or f"run-{claim.run_id}"
    return f"run-{claim.run_id}"


class RunStopped(Exception):
    """Training stopped early: SIGTERM, a cancel command, or a lost lease."""


class RunExecutor:
    def __init__(self, client: ServerClient, claim: ClaimResponse, work_dir: Path, device: str,
                 hub_factory: HubFactory | None, terminate: threading.Event) -> None:
        self.client, self.claim, self.device = client, claim, device
        self.cfg: Config = from_dict(claim.config)
        self.run_dir = work_dir / "runs" / str(claim.run_id)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.terminate = terminate
        self.cancelled = threading.Event()
        self.outbox = Outbox(client, claim.run_id, claim.attempt, self.run_dir)
        self.heartbeat = Heartbeat(client, claim.run_id, claim.attempt, claim.lease_seconds, self._on_command)
        self.hub = self.smoke_hub = None
        if hub_factory and self.cfg.hub_repo:
            self.hub = hub_factory(self.cfg.hub_repo, run_key(claim), keep_every=self.cfg.keep_every)
            # the smoke test's backup lives apart, so a resume can never pick up its weights
            self.smoke_hub = hub_factory(self.cfg.hub_repo, f"{run_key(claim)}-smoke-test", keep_every=1)
        self.backups = BackupQueue(self.hub) if self.hub else None
        self.trainer: Trainer | None = None
        self.hashes: dict[int, tuple[str, int]] = {}

    # -- reporting -------------------------------------------------------
    def event(self, message: str, level: str = "info") -> None:
        message = redact(message)  # tracebacks of Hub calls may quote a token
        log.log(logging.ERROR if level == "error" else logging.INFO, "run %s: %s", self.claim.run_id, message)
        self.outbox.post("events", {"level": level, "message": message})

    def verified(self, key: str, detail: str | None = None) -> None:
        self.outbox.post("checklist", {"key": key, "detail": detail})

    def stage(self, name: str) -> None:
        self.outbox.post("stage", {"stage": name})

    def lost(self) -> bool:
        return self.heartbeat.lost.is_set() or self.outbox.lost.is_set()

    def _on_command(self, command_id: int, kind: str) -> None:
        if kind == "cancel":
            self.event("cancel requested from the dashboard")
            self.cancelled.set()
        elif kind == "backup":
            self._backup_now(command_id)

    def _backup_now(self, command_id: int | None) -> None:
        newest = checkpoint.list_checkpoints(self.ckpt_dir)
        if self.backups is None or not newest:
            reason = "no Hub repo configured (set hub_repo)" if self.backups is None else "no checkpoint yet"
            if command_id is not None:
                self.outbox.post(f"commands/{command_id}", {"state": "error", "detail": reason})
            return
        path = newest[-1]
        step = checkpoint.step_of(path)
        if step not in self.hashes:  # saved by an earlier attempt
            self.hashes[step] = file_sha256(path)
        self.backups.request(path, step, self._extras, self._on_backup_state, command_id)

    def _extras(self) -> dict[str, bytes]:
        """The metrics export and the figures; the weights matter more, so a failure here
        only leaves them out of this backup."""
        extras: dict[str, bytes] = {}
        self.outbox.flush(timeout=60)  # the export should hold what training has logged so far
        try:
            extras[METRICS_FILE] = self.client.export(self.claim.run_id)
            extras.update({f"figures/{name}": png for name, png in self.client.figures(self.claim.run_id).items()})
        except Exception as e:
            log.warning("metrics export or figures for the backup failed: %s", e)
        return extras

    def checkpoint_saved(self, step: int, path: Path) -> None:
        """Hash a new checkpoint once; backup state updates reuse it."""
        sha256, size = file_sha256(path)
        self.hashes[step] = (sha256, size)
        self.outbox.post("checkpoints", {"step": step, "size": size, "sha256": sha256, "backup_state": "local"})

    def _on_backup_state(self, step: int, state: str, detail: str | None, command_ids: list[int]) -> None:
        if step in self.hashes:
            sha256, size = self.hashes[step]
            self.outbox.post("checkpoints", {
                "step": step, "size": size, "sha256": sha256, "backup_state": state,
                "hub_url": detail if state == "hub" else None, "error": detail if state == "error" else None})
        command_state = {"uploading": "uploading", "hub": "done", "error": "error"}[state]
        for command_id in command_ids:
            self.outbox.post(f"commands/{command_id}", {"state": command_state, "detail": detail})
        if state == "error":
            self.event(f"backup of step {step} failed: {detail}; training goes on", "warning")

    # -- stages ----------------------------------------------------------
    def run(self) -> str:
        """Runs every stage; returns the final status sent (or 'stopped' / 'lost')."""
        try:
            data = self.stage_data()
            self.stage_smoke(data)
            final = self.stage_train(data)
            self.stage_eval(final)
            return self.finish("succeeded")
        except RunStopped as e:
            if self.cancelled.is_set() and not self.lost():
                return self.finish("cancelled")
            self.event(f"worker stopped: {e}", "warning")
            return "lost" if self.lost() else "stopped"
        except Exception as e:
            self.event("".join(traceback.format_exception(e))[-4000:], "error")
            return self.finish("failed", f"{type(e).__name__}: {e}")
        finally:
            self.heartbeat.stop()
            self._drain_backups()
            self.outbox.close(timeout=60)

    def _drain_backups(self) -> None:
        """Wait for the last upload: its state updates must reach the server."""
        if self.backups and not self.backups.close(timeout=300):
            log.warning("run %s: the last Hub upload is still running", self.claim.run_id)

    def finish(self, status: str, error: str | None = None) -> str:
        """The run's last write: pending backups report first, as the run is closed after it."""
        self._drain_backups()
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

        data = load_dataset(dataset, self.cfg, self.device, progress)
        self.verified("data.ready", f"{data.n_episodes} episodes, {int(data.lengths.sum())} steps")
        return data

    def stage_smoke(self, data: WindowDataset) -> None:
        self.stage("smoke")
        n = self.cfg.smoke_steps
        smoke_cfg = self.cfg.replace(diffusion_gradient_steps=n, invdyn_gradient_steps=n, save_interval=n,
                                     log_interval=min(self.cfg.log_interval, n))
        scratch = self.run_dir / "smoke"
        shutil.rmtree(scratch, ignore_errors=True)
        trainer = Trainer(smoke_cfg, data, scratch)
        trainer.fit(callbacks=(self._Stopper(self),))
        if trainer.step < n:
            raise RunStopped(f"stopped during the smoke test at step {trainer.step}")
        self.verified("smoke.steps", f"{n} steps")
        path = scratch / checkpoint.checkpoint_name(n)
        if not path.exists():
            raise RuntimeError(f"smoke test: no checkpoint at {path}")
        self.verified("smoke.checkpoint", f"{path.stat().st_size / 1e6:.1f} MB")
        reloaded = Trainer(smoke_cfg, data, scratch)
        reloaded.resume_latest()
        for (key, a), b in zip(trainer.model.state_dict().items(), reloaded.model.state_dict().values()):
            if not torch.equal(a, b):
                raise RuntimeError(f"smoke test: reloaded weights differ at {key}")
        actions = Planner(reloaded.model, smoke_cfg).act(data.normalizer.mean[None])
        if actions.shape != (1, data.act_dim):
            raise RuntimeError(f"smoke test: planner returned shape {actions.shape}")
        self.verified("smoke.reload", "weights equal, one planning call works")
        if self.smoke_hub:
            self.smoke_hub.ensure_repo()
            result = self.smoke_hub.backup(path, n, {})
            self.verified("smoke.backup", result.url)
        else:
            self.event("smoke test: Hub backup skipped: no hub_repo in the run's config", "warning")
        shutil.rmtree(scratch, ignore_errors=True)

    class _Stopper:
        def __init__(self, ex: "RunExecutor") -> None:
            self.ex = ex

        def on_log(self, record: LogRecord) -> None:
            pass

        def on_checkpoint(self, step: int, path: Path) -> None:
            pass

        def should_stop(self) -> bool:
            return self.ex.terminate.is_set() or self.ex.cancelled.is_set() or self.ex.lost()

    def _restore(self, trainer: Trainer) -> str:
        resumed = trainer.resume_latest()
        if resumed:
            return f"resumed from step {trainer.step} (local checkpoint)"
        if self.hub:
            restored = self.hub.restore_latest(self.ckpt_dir)
            if restored and trainer.resume_latest():
                self._replay_metrics(self.ckpt_dir / METRICS_FILE, trainer.step)
                return f"resumed from step {trainer.step} (Hugging Face Hub)"
        return "started fresh"

    def _replay_metrics(self, export: Path, upto: int, batch: int = 10_000) -> None:
        """A fresh server (a new Colab VM) gets the curves back from the Hub's export; points
        past the checkpoint are left out, training will log them again."""
        if not export.exists():
            return
        points = [{"key": key, "step": step, "value": value, "wall_time": wall}
                  for key, series in json.loads(export.read_bytes())["metrics"].items()
                  for step, value, wall in series if step <= upto]
        for i in range(0, len(points), batch):
            self.outbox.post("metrics", {"points": points[i:i + batch]})

    def stage_train(self, data: WindowDataset) -> Path:
        self.stage("train")
        trainer = self.trainer = Trainer(self.cfg, data, self.ckpt_dir)
        how = self._restore(trainer)
        self.verified("train.start", how)
        self.event(f"training {how}, to step {self.cfg.total_steps} on {self.device}")
        trainer.fit(callbacks=(self._TrainReporter(self),))
        if trainer.step < self.cfg.total_steps:
            raise RunStopped(f"stopped at step {trainer.step}; checkpoint saved")
        self.verified("train.done", f"step {trainer.step}")
        return self.ckpt_dir / checkpoint.checkpoint_name(trainer.step)

    class _TrainReporter(_Stopper):
        def on_log(self, record: LogRecord) -> None:
            ex = self.ex
            ex.heartbeat.step, ex.heartbeat.steps_per_s = record.step, record.steps_per_s
            ex.outbox.metrics(record.step, {**record.losses, "lr": record.lr, "steps_per_s": record.steps_per_s},
                              record.wall_time)
            cfg = ex.cfg
            if cfg.eval_every and record.step % cfg.eval_every == 0 and record.step < cfg.total_steps:
                ex.report_evaluation(Planner(ex.trainer.model, cfg), record.step, "quick",
                                     cfg.eval_envs, cfg.eval_episodes)
                ex.trainer.model.train()

        def on_checkpoint(self, step: int, path: Path) -> None:
            ex = self.ex
            ex.checkpoint_saved(step, path)
            if ex.backups and ex.cfg.backup_every and step % ex.cfg.backup_every == 0:
                ex._backup_now(None)

    def report_evaluation(self, planner: Planner, step: int, kind: str, n_envs: int, n_episodes: int) -> float:
        """Evaluate with the EMA weights; seeds differ from training's so scores are held out."""
        result = evaluate(planner, n_envs, n_episodes, seed=self.cfg.seed + 10_000)
        self.outbox.post("evaluations", {
            "step": step, "kind": kind, "score_mean": result.score_mean, "score_std": result.score_std,
            "returns": result.returns, "scores": result.scores, "n_envs": n_envs, "n_episodes": n_episodes,
            "latency_ms": result.latency_ms})
        self.outbox.metrics(step, {"score": result.score_mean}, time.time())
        return result.score_mean

    def stage_eval(self, final: Path) -> None:
        self.stage("eval")
        cfg = self.cfg
        planner = Planner.from_checkpoint(final, self.device)
        score = self.report_evaluation(planner, checkpoint.step_of(final), "final", cfg.num_envs, cfg.num_episodes)
        self.verified("eval.done", f"{cfg.num_envs} envs × {cfg.num_episodes} episodes")
        self.verified("eval.score", f"{score:.1f}")
        self.event(f"final normalised score {score:.1f} ({cfg.num_envs} envs × {cfg.num_episodes} episodes)")
        if self.backups:
            self._backup_now(None)
