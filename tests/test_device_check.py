"""The device check: a wrong or failing path is refused and the run falls back; `auto` picks
the fastest verified path; an explicit choice that cannot run is refused before training;
the real check runs end to end on this CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dlite import d4rl, device_check
from dlite.config import from_dict
from dlite.dataset import WindowDataset
from dlite.device_check import DeviceCheckError, PathResult, choose, run_check
from dlite.planner import Planner
from dlite.train import Trainer
from tests.app_helpers import ROOT
from tests.conftest import TINY

CHECK = {**TINY, "num_envs": 3}


@pytest.fixture
def data(tiny_hdf5: Path) -> WindowDataset:
    return WindowDataset(d4rl.load(tiny_hdf5), from_dict(CHECK), "cpu")


class _WrongActions(Planner):
    """A planning path that computes something else: its actions are off by 1e-3."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        return super().act(obs) + 1e-3


class _WrongLosses(Trainer):
    """A training path whose losses come out 1 % high."""

    def train_step(self) -> None:
        super().train_step()
        self.loss_sum *= 1.01


def _wrong_losses(path: str) -> device_check.TrainerFactory:
    return lambda cfg, d: _WrongLosses(cfg, d, None, path)


def _detail(p: PathResult) -> str:
    assert p.detail is not None, p
    return p.detail


def _max_diff(p: PathResult) -> float:
    assert p.max_diff is not None, p
    return p.max_diff


def _raises(*_: object) -> Planner:
    raise RuntimeError("CUDA error: an illegal memory access was encountered\nCompile with TORCH_USE_CUDA_DSA")


def test_a_path_that_differs_or_raises_is_refused_and_the_run_falls_back(
    data: WindowDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        device_check.PLANNERS,
        "packed",
        lambda model, cfg, variant, **kw: _WrongActions(model, cfg, variant=variant, **kw),
    )
    for name in ("fused", "batched"):  # the fused optimiser is what is broken: both paths use it
        monkeypatch.setitem(device_check.TRAINERS, name, _wrong_losses(name))
    report = run_check(from_dict(CHECK), data)
    packed, fused = report.path("plan", "packed"), report.path("train", "fused")
    assert packed.status == "failed" and packed.max_diff == pytest.approx(1e-3, rel=1e-3)
    assert "differ from the textbook loop's by 1.0e-03, more than 1e-05" in _detail(packed)
    assert fused.status == "failed" and "differ from eager" in _detail(fused) and _max_diff(fused) > 1e-3
    assert report.chosen == {"train": "eager", "plan": "eager"}
    assert {(p.stage, p.name) for p in report.refused()} == {
        ("plan", "packed"),
        ("train", "fused"),
        ("train", "batched"),
    }
    assert "refused: train fused, train batched, plan packed" in report.summary()
    assert report.path("plan", "eager").status == "ok" and _max_diff(report.path("plan", "eager")) <= 1e-5

    monkeypatch.setitem(device_check.PLANNERS, "packed", _raises)
    monkeypatch.setitem(device_check.TRAINERS, "fused", _raises)
    monkeypatch.setitem(device_check.TRAINERS, "batched", _raises)
    report = run_check(from_dict(CHECK), data)
    for stage, name in (("plan", "packed"), ("train", "fused"), ("train", "batched")):
        p = report.path(stage, name)
        assert p.status == "failed"
        assert p.detail == "RuntimeError: CUDA error: an illegal memory access was encountered", "the first line"
    assert report.chosen == {"train": "eager", "plan": "eager"}
    assert "packed" in report.table() and "illegal memory access" in report.table()


def test_a_path_whose_loss_turns_nan_is_refused(data: WindowDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    class Diverging(Trainer):
        def train_step(self) -> None:
            super().train_step()
            if self.step > 8:
                self.loss_sum[0] = float("nan")

    monkeypatch.setitem(device_check.TRAINERS, "fused", lambda cfg, d: Diverging(cfg, d, None, "fused"))
    found = device_check.check_training(from_dict(CHECK), data, ["fused"], steps=12)
    assert found[1].status == "failed" and found[1].detail == "a loss became NaN or infinite"
    assert found[1].max_diff is None, "JSON has no NaN: the report must still reach the server"


def test_a_reference_that_diverges_verifies_nothing_and_the_run_trains_on_eager(
    data: WindowDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's own on_nonfinite setting decides what a diverging run does, not the check."""

    class Diverging(Trainer):
        def train_step(self) -> None:
            super().train_step()
            self.loss_sum[0] = float("inf")

    monkeypatch.setitem(device_check.TRAINERS, "eager", lambda cfg, d: Diverging(cfg, d, None, "eager"))
    report = run_check(from_dict(CHECK), data)
    assert report.path("train", "fused").detail == report.path("train", "batched").detail == device_check.NO_REFERENCE
    assert report.chosen["train"] == "eager" and "not finite" in _detail(report.path("train", "eager"))


def test_a_resumed_checkpoints_path_is_kept_when_it_passes() -> None:
    """Bit-exact resume: a run that trained on `eager` goes on on `eager` though `fused` timed faster."""
    found = [PathResult("train", "eager", "reference", ms=10.0), PathResult("train", "fused", "ok", ms=8.0)]
    assert choose(found, "auto", "train_accel", "eager", prefer="eager") == "eager"
    assert choose(found, "auto", "train_accel", "eager", prefer="compile") == "fused", "not checked: the fastest"
    found[1].refuse("differs")
    assert choose(found, "auto", "train_accel", "eager", prefer="fused") == "eager", "refused: not kept"


def test_auto_picks_the_fastest_verified_full_precision_path() -> None:
    train = [
        PathResult("train", "eager", "reference", ms=10.0),
        PathResult("train", "fused", "ok", ms=8.0),
        PathResult("train", "compile", "failed", ms=2.0),
        PathResult("train", "amp", "ok", ms=3.0),
    ]
    assert choose(train, "auto", "train_accel", "eager") == "fused", "failed and reduced precision are not picked"
    assert choose(train, "amp", "train_accel", "eager") == "amp", "an explicit reduced-precision path is used"
    with pytest.raises(DeviceCheckError, match="train_accel=compile failed the device check"):
        choose(train, "compile", "train_accel", "eager")
    plan = [
        PathResult("plan", "plain", "reference", ms=9.0, ms_batch=30.0),
        PathResult("plan", "eager", "ok", ms=3.0, ms_batch=12.0),
        PathResult("plan", "packed", "ok", ms=2.0, ms_batch=14.0),
    ]
    assert choose(plan, "auto", "plan_accel", "plain") == "eager", "by the evaluation batch's time"
    assert choose(plan[:1] + [PathResult("plan", "eager", "failed")], "auto", "plan_accel", "plain") == "plain", (
        "the textbook loop when nothing faster passed"
    )


def test_an_explicit_path_that_cannot_run_here_is_refused_before_any_training(
    data: WindowDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(device_check.TRAINERS, "eager", _raises)  # would fail if training were tried
    with pytest.raises(DeviceCheckError, match="plan_accel=cuda_graph cannot run on this device: CUDA graphs need"):
        run_check(from_dict({**CHECK, "plan_accel": "cuda_graph"}), data)
    with pytest.raises(DeviceCheckError, match="train_accel=amp cannot run on this device: mixed precision"):
        run_check(from_dict({**CHECK, "train_accel": "amp"}), data)


def test_the_projection_prices_each_evaluation_at_its_own_batch_and_variant() -> None:
    cfg = from_dict(
        {
            "variant": "R2",
            "diffusion_gradient_steps": 1000,
            "invdyn_gradient_steps": 1000,
            "reflow_gradient_steps": 1000,
            "eval_every": 500,
            "eval_envs": 4,
            "eval_episodes": 2,
            "num_envs": 10,
            "num_episodes": 3,
            "max_episode_steps": 100,
            "save_interval": 100,
            "log_interval": 100,
            "backup_every": 0,
        }
    )
    train = PathResult("train", "fused", "ok", ms=20.0, ms_reflow=10.0)
    plan = PathResult("plan", "eager", "ok", ms=1.0, ms_batch=10.0, warmup_s=0.5)
    rates = {("R1", 4): 4.0, ("R1", 10): 10.0, ("R2", 4): 2.0, ("R2", 10): 5.0}
    pr = device_check.project(cfg, train, plan, rates, pairs_s=7.0)
    assert pr["train_s"] == pytest.approx(20.0) and pr["reflow_s"] == pytest.approx(10.0), "reflow at its own rate"
    # quick evaluations at step 500 (R1) and 1500 (R2; 1000 and 2000 end the stages), then each final one,
    # and the planner's warm-up once
    quick = 0.004 * 100 * 2 + 0.002 * 100 * 2
    final = 0.010 * 100 * 3 + 0.005 * 100 * 3
    assert pr["eval_s"] == pytest.approx(quick + final + 0.5)
    assert (pr["quick_eval_s"], pr["final_eval_s"]) == (pytest.approx(quick), pytest.approx(final + 0.5))
    assert pr["total_s"] == pytest.approx(20 + 10 + 7 + pr["eval_s"])


def test_nan_actions_anywhere_and_a_non_finite_reference_are_caught(
    data: WindowDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NanForBatches(Planner):
        def act(self, obs: np.ndarray) -> np.ndarray:
            actions = super().act(obs)
            return actions * np.nan if len(obs) > 1 else actions  # fine for one env, NaN for a batch

    cfg = from_dict({**CHECK, "variant": "R2"})
    model = device_check.check_model(cfg, data)
    monkeypatch.setitem(
        device_check.PLANNERS,
        "packed",
        lambda model, cfg, variant, **kw: NanForBatches(model, cfg, variant=variant, **kw),
    )
    found, _ = device_check.check_planning(model, cfg, ["eager", "packed"], (2, 3), ("R1", "R2"))
    assert [r.status for r in found] == ["reference", "ok", "failed"]
    assert found[2].detail == "its actions are NaN or infinite" and found[2].max_diff is None
    # a reference that is not finite verifies nothing: every other path is refused, the run goes on plain
    monkeypatch.setitem(
        device_check.PLANNERS,
        "plain",
        lambda model, cfg, variant, **kw: NanForBatches(model, cfg, variant=variant, plain=True),
    )
    found, _ = device_check.check_planning(model, cfg, ["eager"], (3,))
    assert _detail(found[0]).endswith("its actions were not finite")
    assert found[1].status == "failed" and found[1].detail == device_check.NO_REFERENCE
    assert choose(found, "auto", "plan_accel", "plain") == "plain"


def test_an_explicit_path_that_fails_its_check_stops_before_training(
    data: WindowDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(device_check.TRAINERS, "fused", lambda cfg, d: _WrongLosses(cfg, d, None, "fused"))
    with pytest.raises(DeviceCheckError, match=r"train_accel=fused failed the device check: losses differ"):
        run_check(from_dict({**CHECK, "train_accel": "fused"}), data)


def test_a_path_that_crashed_the_process_is_not_tried_again(
    data: WindowDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal says the last check died inside `plan.packed` (a segfault leaves nothing else)."""
    journal = tmp_path / device_check.JOURNAL_FILE
    journal.write_text(json.dumps({"crashed": {}, "running": ["plan.packed"]}))
    monkeypatch.setitem(device_check.PLANNERS, "packed", _raises)  # must not be called
    for _ in range(2):  # and it stays refused on the attempt after
        report = run_check(from_dict(CHECK), data, journal_file=journal)
        packed = report.path("plan", "packed")
        assert packed.status == "failed" and "the process died while checking this path" in _detail(packed)
        assert report.chosen["plan"] == "eager"
    assert json.loads(journal.read_text())["running"] == []


@pytest.mark.parametrize(("first", "then"), [("fused", "eager"), ("eager", "fused")])
def test_a_resumed_trainer_uses_this_attempts_optimiser_kind(
    data: WindowDataset, tmp_path: Path, first: str, then: str
) -> None:
    """The checkpoint's optimiser state carries its fused/foreach flags; the path verified now wins,
    and training goes on from the resumed state."""
    cfg = from_dict(CHECK)
    Trainer(cfg, data, tmp_path, first).fit(until=20)
    resumed = Trainer(cfg, data, tmp_path, then)
    assert resumed.resume_latest() is not None and resumed.step == 20
    for optim in (resumed.optim, resumed.invdyn_optim):
        assert all(
            bool(g["fused"]) == (then == "fused") and bool(g["foreach"]) == (then == "eager")
            for g in optim.param_groups
        )
    resumed.fit(until=30)
    assert resumed.step == 30 and all(np.isfinite(v) for v in resumed.read_losses().values())


def test_dlite_check_measures_every_path_of_this_cpu() -> None:
    """`dlite check --all --json`: the real check, compile included where a C++ compiler is."""
    settings = [f"--set={k}={v}" for k, v in {**CHECK, "horizons": "[3,3,5]"}.items()]
    done = subprocess.run(
        [sys.executable, "-m", "dlite.cli", "check", "--all", "--json", "--device", "cpu", *settings],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    status = {(p["stage"], p["name"]): p["status"] for p in report["paths"]}
    compiles = "ok" if device_check.has_compiler() else "skipped"
    packs = "ok" if torch.backends.mkldnn.is_available() else "skipped"
    assert status == {
        ("train", "eager"): "reference",
        ("train", "fused"): "ok",
        ("train", "batched"): "ok",
        ("train", "compile"): compiles,
        ("train", "amp"): "skipped",
        ("train", "compile_amp"): "skipped",
        ("plan", "plain"): "reference",
        ("plan", "eager"): "ok",
        ("plan", "packed"): packs,
        ("plan", "compile"): compiles,
        ("plan", "bf16"): "ok",
        ("plan", "cuda_graph"): "skipped",
    }
    for p in report["paths"]:
        if p["status"] in ("ok", "reference"):
            assert p["ms"] > 0 and (p["stage"] == "train" or p["ms_batch"] > 0)
        if p["status"] == "ok":
            assert p["max_diff"] <= p["tolerance"]
    assert report["chosen"]["train"] in ("eager", "fused", "batched", "compile")
    assert report["chosen"]["plan"] in ("eager", "packed", "compile"), "bf16 only when asked"
    assert report["projection"]["train_steps"] == 40 and report["projection"]["total_s"] > 0
    assert report["device"] == "cpu" and report["torch"] == torch.__version__ and report["check_s"] > 0
