"""dlite speed: training step, batch sampling, planning, evaluation. Prints JSON.

Usage: python bench/bench_dlite.py [--device cuda] [--repeats 5] [--compile] [--amp]
Every figure is the median of --repeats timed runs after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dlite import d4rl
from dlite.config import from_dict
from dlite.dataset import WindowDataset
from dlite.evaluate import evaluate
from dlite.planner import Planner
from dlite.synthetic import write_hdf5
from dlite.train import Trainer


def synthetic_raw(folder: Path, episodes: int) -> d4rl.RawDataset:
    """HalfCheetah-shaped random data: sampling cost depends on batch, not on content."""
    rng = np.random.default_rng(0)
    n = episodes * 1000
    timeouts = np.zeros(n, bool)
    timeouts[999::1000] = True
    arrays = {"observations": rng.standard_normal((n, 17), dtype=np.float32),
              "actions": rng.uniform(-1, 1, (n, 6)).astype(np.float32),
              "rewards": rng.standard_normal(n, dtype=np.float32),
              "terminals": np.zeros(n, bool), "timeouts": timeouts}
    return d4rl.load(write_hdf5(folder / "bench.hdf5", arrays))


def timed(fn: Callable[[], None], repeats: int, inner: int, device: torch.device) -> float:
    """Median seconds per call of fn over `repeats` runs of `inner` calls."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
    fn()
    sync()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        runs.append((time.perf_counter() - t0) / inner)
    return statistics.median(runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="training steps per timed run")
    p.add_argument("--episodes", type=int, default=200, help="1000-step episodes of synthetic data")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--amp", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = from_dict({"batch_size": 256})
    with tempfile.TemporaryDirectory() as tmp:
        raw = synthetic_raw(Path(tmp), args.episodes)
        t0 = time.perf_counter()
        data = WindowDataset(raw, cfg, device)
        build_s = time.perf_counter() - t0
        trainer = Trainer(cfg, data, Path(tmp) / "ckpt", compile=args.compile, amp=args.amp)

        step_s = timed(trainer.train_step, args.repeats, args.steps, device)
        sample_s = timed(lambda: data.sample(cfg.batch_size), args.repeats, 20, device)

        fixed = data.sample(cfg.batch_size)
        params = list(trainer.model.levels.parameters())

        def fixed_step() -> None:
            losses = trainer._losses(fixed)
            trainer.optim.zero_grad(set_to_none=True)
            trainer.invdyn_optim.zero_grad(set_to_none=True)
            losses.sum().backward()
            trainer.optim.step()
            trainer.invdyn_optim.step()
            torch._foreach_lerp_(list(trainer.model.ema_levels.parameters()), params, 1 - cfg.ema_rate)

        model_s = timed(fixed_step, args.repeats, args.steps, device)

        planner = Planner(trainer.model, cfg)
        obs1 = raw.observations[:1]
        obs50 = raw.observations[:50]
        plan1 = timed(lambda: planner.act(obs1), args.repeats, 5, device)
        plan50 = timed(lambda: planner.act(obs50), args.repeats, 5, device)
        eval_runs = [evaluate(planner, n_envs=10, n_episodes=1, max_steps=50).wall_s for _ in range(3)]

    print(json.dumps({
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "compile": args.compile, "amp": args.amp, "batch_size": cfg.batch_size,
        "dataset_build_s": round(build_s, 3),
        "train_steps_per_s": round(1 / step_s, 2),
        "train_step_ms": round(1000 * step_s, 3),
        "models_only_step_ms": round(1000 * model_s, 3),
        "step_over_models_only": round(step_s / model_s, 3),
        "sample_batch_ms": round(1000 * sample_s, 3),
        "sample_share_of_step": round(sample_s / step_s, 4),
        "plan_decisions_per_s_1env": round(1 / plan1, 1),
        "plan_decisions_per_s_50env": round(50 / plan50, 1),
        "plan_latency_ms_1env": round(1000 * plan1, 2),
        "plan_latency_ms_50env": round(1000 * plan50, 2),
        "eval_wall_s_10envs_1ep_50steps": round(statistics.median(eval_runs), 2),
        "projected_hours_1M_steps": round(step_s * 1_000_000 / 3600, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
