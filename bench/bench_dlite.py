"""dlite speed: training and reflow steps, batch sampling, planning, evaluation. Prints JSON.

Usage: python bench/bench_dlite.py [--device cuda] [--repeats 5] [--train-path eager] [--plan-path packed] [--check]
Every figure is the median of --repeats timed runs after a warm-up (dlite.device_check.timed,
the device check's own timer); ratios are measured in the same run, and the device check's
report (every path verified and timed, the one a run would choose) is part of the output.
For 50 environments the work per decision (GFLOP) and this device's large-
matmul rate give a ceiling on the speedup over the plain loop that no planner doing the
same arithmetic can pass. Planning is timed for R1 (3 sampling steps) and R2 (1 step) with the fast
planner, and with the plain textbook loop (flow.sample per level) it is tested against.
`--check` compares with bench/targets.json and exits 1 when a target is missed: the targets are
ratios within one run (the fast planner against the plain loop), which hold on a noisy VM and
on AVX2-only and AVX-512 CPUs alike, where absolute rates do not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dlite import d4rl, stacked
from dlite.config import Config, from_dict
from dlite.dataset import WindowDataset
from dlite.device_check import PLAN_OPTIONS, run_check, timed
from dlite.evaluate import device_name, evaluate
from dlite.ops import count_ops
from dlite.planner import Planner
from dlite.reflow import PairSpec, PairStore, ReflowTrainer
from dlite.synthetic import random_dataset
from dlite.train import STEP_PATHS, Trainer

TARGETS = Path(__file__).with_name("targets.json")


def synthetic_raw(folder: Path, episodes: int) -> d4rl.RawDataset:
    """HalfCheetah-shaped random data: sampling cost depends on batch, not on content."""
    return random_dataset(folder / "bench.hdf5", 17, 6, episodes)


def one_group_step_ops(cfg: Config, data: WindowDataset) -> int:
    """Ops of a batched step in a GPU's layout (every level padded into one group), counted on
    this device: the count a launch-bound GPU step scales with."""
    pads = stacked.pads
    stacked.pads = lambda device: True
    try:
        trainer = Trainer(cfg, data, None, "batched")
    finally:
        stacked.pads = pads
    trainer.train_step()
    return count_ops(trainer.train_step)


def decision_gflop(planner: Planner, obs: np.ndarray) -> float:
    """Floating-point work of one decision, counted on the unpacked planner: FlopCounterMode
    knows PyTorch's matmuls, not oneDNN's packed linear, nor the CPU attention kernel (0.4 %
    of an R1 decision, so the ceiling below is that much high)."""
    with FlopCounterMode(display=False) as counter:
        planner.act(obs)
    return counter.get_total_flops() / 1e9


def matmul_gflops(device: torch.device, repeats: int) -> float:
    """What this device does at its best in the planning dtype: a large fp32 matmul. A
    batched decision cannot beat it, so it bounds the speedup any planner can reach."""
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    return 2 * 2048**3 / timed(lambda: torch.mm(a, b), repeats, 5, device) / 1e9


def check(result: dict, device: str) -> list[str]:
    """Targets missed, by name (empty when all are met)."""
    targets = json.loads(TARGETS.read_text()).get(device, {})
    missed = []
    for name, bound in targets.items():
        value = result.get(name)
        if value is None or ("min" in bound and value < bound["min"]) or ("max" in bound and value > bound["max"]):
            missed.append(f"{name} = {value} (target {bound})")
    return missed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="training steps per timed run")
    p.add_argument("--episodes", type=int, default=200, help="1000-step episodes of synthetic data")
    p.add_argument("--train-path", default="eager", choices=sorted(STEP_PATHS), help="training path timed")
    p.add_argument(
        "--plan-path",
        choices=sorted(set(PLAN_OPTIONS) - {"plain"}),
        help="fast planning path timed (default: packed on a CPU, cuda_graph on CUDA)",
    )
    p.add_argument("--check", action="store_true", help="exit 1 if a target of bench/targets.json is missed")
    args = p.parse_args()
    device = torch.device(args.device)
    fast_options = PLAN_OPTIONS[args.plan_path or ("cuda_graph" if device.type == "cuda" else "packed")]
    cfg = from_dict(
        {
            "batch_size": 256,
            "reflow_pairs_cond": 2048,
            "reflow_pairs_uncond": 512,
            "reflow_pair_batch": 512,
            "variant": "R2",
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        raw = synthetic_raw(Path(tmp), args.episodes)
        t0 = time.perf_counter()
        data = WindowDataset(raw, cfg, device)
        build_s = time.perf_counter() - t0
        trainer = Trainer(cfg, data, Path(tmp) / "ckpt", args.train_path)

        step_s = timed(trainer.train_step, args.repeats, args.steps, device)
        sample_s = timed(lambda: data.sample(cfg.batch_size), args.repeats, 20, device)
        step_ops = count_ops(trainer.train_step)
        # the per-level step (eager) and the batched one, timed alternately in this run
        paths = {name: Trainer(cfg, data, None, name) for name in ("eager", "batched")}
        path_s: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.repeats):
            for name, t in paths.items():
                path_s[name].append(timed(t.train_step, 1, args.steps, device))
        path_ms = {name: 1000 * statistics.median(times) for name, times in path_s.items()}
        path_ops = {name: count_ops(t.train_step) for name, t in paths.items()}
        del paths
        gpu_layout = one_group_step_ops(cfg, data)

        fixed = data.sample(cfg.batch_size)
        params: list[torch.Tensor] = list(trainer.model.levels.parameters())

        def fixed_step() -> None:
            losses = trainer._losses(fixed)
            trainer.optim.zero_grad(set_to_none=True)
            trainer.invdyn_optim.zero_grad(set_to_none=True)
            losses.sum().backward()
            trainer.optim.step()
            trainer.invdyn_optim.step()
            torch._foreach_lerp_(list(trainer.model.ema_levels.parameters()), params, 1 - cfg.ema_rate)

        model_s = timed(fixed_step, args.repeats, args.steps, device)

        t0 = time.perf_counter()
        store = PairStore(Path(tmp) / "pairs", PairSpec.of(cfg, trainer.model, data))
        store.generate(trainer.model, data)
        pairs_per_s = store.spec.total * len(cfg.horizons) / (time.perf_counter() - t0)
        reflow = ReflowTrainer(cfg, data, store, trainer.model, 0, path=args.train_path)
        reflow_s = timed(reflow.train_step, args.repeats, args.steps, device)

        obs1, obs50 = raw.observations[:1], raw.observations[:50]
        peak = matmul_gflops(device, args.repeats)
        planning: dict[str, float | int] = {"matmul_gflops_per_s": round(peak, 1)}
        for variant in ("R1", "R2"):
            fast = Planner(trainer.model, cfg, variant=variant, **fast_options)
            plain = Planner(trainer.model, cfg, variant=variant, pack=False)
            eager = Planner(trainer.model, cfg, variant=variant)  # what a decision dispatches, even on CUDA
            eager.act(obs1)
            fast1 = timed(partial(fast.act, obs1), args.repeats, 20, device)
            fast50 = timed(partial(fast.act, obs50), args.repeats, 5, device)
            plain1 = timed(partial(plain.act_plain, obs1), args.repeats, 20, device)
            plain50 = timed(partial(plain.act_plain, obs50), args.repeats, 5, device)
            planning.update(
                {
                    f"plan_hz_1env_{variant}": round(1 / fast1, 1),
                    f"plan_latency_ms_1env_{variant}": round(1000 * fast1, 3),
                    f"plan_latency_ms_50env_{variant}": round(1000 * fast50, 2),
                    f"plan_decisions_per_s_50env_{variant}": round(50 / fast50, 1),
                    f"plan_plain_latency_ms_1env_{variant}": round(1000 * plain1, 3),
                    f"plan_plain_latency_ms_50env_{variant}": round(1000 * plain50, 2),
                    f"plan_speedup_1env_{variant}_vs_plain": round(plain1 / fast1, 2),
                    f"plan_speedup_50env_{variant}_vs_plain": round(plain50 / fast50, 2),
                    f"ops_per_decision_{variant}": count_ops(partial(eager.act, obs1)),
                    f"ops_per_decision_plain_{variant}": count_ops(partial(plain.act_plain, obs1)),
                }
            )
            gflop = decision_gflop(Planner(trainer.model, cfg, variant=variant, pack=False), obs50)
            planning.update(
                {
                    f"gflop_per_decision_50env_{variant}": round(gflop, 3),
                    f"plan_gflops_per_s_50env_{variant}": round(gflop / fast50, 1),
                    # the most any planner doing this work can gain on the plain loop here
                    f"plan_speedup_50env_{variant}_ceiling": round(plain50 / (gflop / peak), 2),
                    f"plan_share_of_matmul_50env_{variant}": round(gflop / fast50 / peak, 3),
                }
            )
            bf16 = Planner(trainer.model, cfg, variant=variant, **PLAN_OPTIONS["bf16"])
            bf1 = timed(partial(bf16.act, obs1), args.repeats, 20, device)
            bf50 = timed(partial(bf16.act, obs50), args.repeats, 5, device)
            planning.update(
                {
                    f"plan_hz_1env_{variant}_bf16": round(1 / bf1, 1),
                    f"plan_latency_ms_50env_{variant}_bf16": round(1000 * bf50, 2),
                    f"plan_speedup_50env_{variant}_bf16_vs_plain": round(plain50 / bf50, 2),
                }
            )
        eval_planner = Planner(trainer.model, cfg, **fast_options)
        eval_runs = [evaluate(eval_planner, n_envs=10, n_episodes=1, max_steps=50).wall_s for _ in range(3)]
        report = run_check(cfg.replace(variant="R1"), data).to_dict()

    result = {
        "device": device_name(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "train_path": args.train_path,
        "plan_path": args.plan_path or "default",
        "batch_size": cfg.batch_size,
        "dataset_build_s": round(build_s, 3),
        "train_steps_per_s": round(1 / step_s, 2),
        "train_step_ms": round(1000 * step_s, 3),
        "ops_per_train_step": step_ops,
        "train_step_ms_per_level": round(path_ms["eager"], 3),
        "train_step_ms_batched": round(path_ms["batched"], 3),
        "batched_speedup_vs_per_level": round(path_ms["eager"] / path_ms["batched"], 3),
        "ops_per_train_step_per_level": path_ops["eager"],
        "ops_per_train_step_batched": path_ops["batched"],
        "ops_per_train_step_batched_gpu_layout": gpu_layout,
        "projected_hours_1M_steps_batched": round(path_ms["batched"] * 1000 / 3600, 2),
        "models_only_step_ms": round(1000 * model_s, 3),
        "step_over_models_only": round(step_s / model_s, 3),
        "sample_batch_ms": round(1000 * sample_s, 3),
        "sample_share_of_step": round(sample_s / step_s, 4),
        "reflow_step_ms": round(1000 * reflow_s, 3),
        "reflow_pairs_per_s": round(pairs_per_s, 1),
        **planning,
        "eval_wall_s_10envs_1ep_50steps": round(statistics.median(eval_runs), 2),
        "projected_hours_1M_steps": round(step_s * 1_000_000 / 3600, 1),
        "device_check": report,
    }
    missed = check(result, device.type) if args.check else []
    result["targets_missed"] = missed
    print(json.dumps(result, indent=1))
    if missed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
