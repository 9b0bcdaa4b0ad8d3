"""The method's subcommands of the `dlite` command: train, reflow and eval.

The product's subcommands (`up`, `worker`) live in worker/cli.py, which composes the one
`dlite` command from both, so this package never imports the layers above it.
`python -m dlite.cli` runs the method's commands alone.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from dlite.config import ConfigError, from_dict, parse_overrides


def _download_bar() -> Callable[[int, int | None], None]:
    from tqdm import tqdm

    bars: list[tqdm] = []

    def progress(done: int, total: int | None) -> None:
        if not bars:
            bars.append(tqdm(desc="download", total=total, unit="B", unit_scale=True))
        bars[0].update(done - bars[0].n)
        if total and done >= total:
            bars[0].close()

    return progress


def _interruptible() -> threading.Event:
    """Ctrl-C only raises a flag: the step in flight completes, so the checkpoint saved on
    stopping resumes bit-exactly."""
    interrupted = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    return interrupted


def _fit_with_progress(trainer: Any, out: Path, interrupted: threading.Event) -> int:
    """Run a trainer to its end with a progress bar; 130 if Ctrl-C stopped it."""
    from tqdm import tqdm

    from dlite.train import LogRecord

    class Progress:
        def __init__(self) -> None:
            self.bar = tqdm(total=trainer.total_steps, initial=trainer.step, unit="step", dynamic_ncols=True)

        def on_log(self, record: LogRecord) -> None:
            self.bar.update(record.step - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in record.losses.items()})

        def on_checkpoint(self, step: int, path: Path) -> None:
            self.bar.write(f"step {step}: saved {path}")

        def should_stop(self) -> bool:
            return interrupted.is_set()

    progress = Progress()
    try:
        trainer.fit(callbacks=(progress,))
    finally:
        progress.bar.close()
    if interrupted.is_set():
        print(f"interrupted at step {trainer.step}; checkpoint saved in {out}", file=sys.stderr)
        return 130
    return 0


def _train(args: argparse.Namespace) -> int:
    from dlite.checkpoint import newest_readable, saved_config
    from dlite.pipeline import build_trainer, default_device, load_dataset, task_for

    overrides = parse_overrides(args.set)
    if args.steps is not None:
        overrides.update(diffusion_gradient_steps=args.steps, invdyn_gradient_steps=args.steps)
    out = Path(args.out)
    found = newest_readable(out) if args.resume else None
    cfg = from_dict({**saved_config(found[1]), **overrides}) if found else from_dict(task_for(args.dataset, overrides))
    device = args.device or default_device()
    data = load_dataset(args.dataset, cfg, device, _download_bar())
    trainer = build_trainer(data, cfg, out, args.resume, found, args.compile, args.amp)
    resumed = found[0] if found else None
    print(f"{cfg.task}: {data.n_episodes} episodes on {device}; "
          + (f"resumed from {resumed} (step {trainer.step})" if resumed else "started fresh"), file=sys.stderr)
    return _fit_with_progress(trainer, out, _interruptible())


def _reflow(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dlite import checkpoint
    from dlite.pipeline import default_device, load_dataset, refuse_existing
    from dlite.reflow import PairSpec, PairStore, ReflowTrainer, load_r1

    source = Path(args.checkpoint)
    device = args.device or default_device()
    state = checkpoint.read(source, device)
    cfg = from_dict({**checkpoint.saved_config(state), **parse_overrides(args.set), "variant": "R2"})
    data = load_dataset(args.dataset or cfg.task, cfg, device, _download_bar())
    checkpoint.check_compatible(state, cfg, data.fingerprint, source)
    r1 = load_r1(state, cfg, data, source)
    out = Path(args.out)
    refuse_existing(out, args.resume, "reflow checkpoints")
    interrupted = _interruptible()
    store = PairStore(out / "pairs", PairSpec.of(cfg, r1, data))
    if not store.complete:
        bar = tqdm(total=store.spec.total * len(cfg.horizons), initial=store.pairs_done, unit="pair",
                   desc="reflow pairs", dynamic_ncols=True)

        def progress(level: int, done: int, total: int) -> None:
            bar.update(level * total + done - bar.n)

        try:
            finished = store.generate(r1, data, progress, interrupted.is_set)
        finally:
            bar.close()
        if not finished:
            print(f"interrupted; {store.pairs_done} pairs kept in {store.folder}, run again to go on",
                  file=sys.stderr)
            return 130
    trainer = ReflowTrainer(cfg, data, store, r1, state["step"], out, args.compile, args.amp)
    resumed = trainer.resume_latest() if args.resume else None
    print(f"{cfg.task}: reflow of {source} on {device}; "
          + (f"resumed from {resumed} (step {trainer.step})" if resumed else "started fresh"), file=sys.stderr)
    return _fit_with_progress(trainer, out, interrupted)


def _eval(args: argparse.Namespace) -> int:
    import torch

    from dlite.evaluate import evaluate
    from dlite.pipeline import default_device
    from dlite.planner import Planner

    planner = Planner.from_checkpoint(Path(args.checkpoint), args.device or default_device(),
                                      w_cfg=args.w_cfg, target_return=args.target_return,
                                      temperature=args.temperature, sampling_steps=args.sampling_steps,
                                      compile=args.compile, cuda_graph=not args.no_cuda_graph,
                                      dtype=torch.bfloat16 if args.bf16 else torch.float32)
    result = evaluate(planner, args.envs, args.episodes, seed=args.seed, max_steps=args.max_steps)
    if args.json:
        print(json.dumps({**result.to_dict(), "decisions_per_s": result.decisions_per_s, "hz_1env": result.hz_1env}))
    else:
        print(f"{result.task} {result.variant} ({planner.sampling_steps} sampling steps): normalised score "
              f"{result.score_mean:.1f} ± {result.score_std:.1f} (std over {len(result.scores)} episodes); "
              f"planning {result.hz_1env:.0f} Hz for one env, {result.decisions_per_s:.0f} decisions/s for "
              f"{args.envs} envs on {result.device}; {result.wall_s:.0f} s")
    return 0


def add_commands(sub: Any) -> None:
    """Register the method's subcommands on a subparsers object."""
    t = sub.add_parser("train", help="train DiffuserLite-R1 on a D4RL dataset")
    t.add_argument("--dataset", required=True, help="task name (e.g. halfcheetah-medium-expert-v2) or HDF5 path")
    t.add_argument("--out", required=True, help="folder for checkpoints")
    t.add_argument("--steps", type=int, help="gradient steps (sets both step counts)")
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    t.add_argument("--compile", action="store_true", help="torch.compile the training step (CUDA graphs on GPU)")
    t.add_argument("--amp", action="store_true", help="mixed precision: bf16, or fp16 with a grad scaler")
    t.set_defaults(func=_train)

    r = sub.add_parser("reflow", help="DiffuserLite-R2: reflow an R1 checkpoint (pairs, then fine-tuning)")
    r.add_argument("--checkpoint", required=True, help="the R1 checkpoint to reflow")
    r.add_argument("--out", required=True, help="folder for the pairs and the R2 checkpoints")
    r.add_argument("--dataset", help="task name or HDF5 path (default: the checkpoint's task)")
    r.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    r.add_argument("--resume", action="store_true", help="continue from the newest reflow checkpoint in --out")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a reflow setting (e.g. reflow_gradient_steps=200000)")
    r.add_argument("--compile", action="store_true", help="torch.compile the training step (CUDA graphs on GPU)")
    r.add_argument("--amp", action="store_true", help="mixed precision: bf16, or fp16 with a grad scaler")
    r.set_defaults(func=_reflow)

    e = sub.add_parser("eval", help="score an R1 or R2 checkpoint on the -v4 MuJoCo environment")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--envs", type=int, default=50, help="parallel environments (default 50)")
    e.add_argument("--episodes", type=int, default=3, help="episodes per environment (default 3)")
    e.add_argument("--max-steps", type=int, help="step limit per episode (default: the config's)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device")
    e.add_argument("--w-cfg", type=float, help="guidance weight (default: the task's, R1 or R2)")
    e.add_argument("--target-return", type=float, help="value condition (default: the task's, R1 or R2)")
    e.add_argument("--temperature", type=float)
    e.add_argument("--sampling-steps", type=int, help="Euler steps per level (default: R1 3, R2 1)")
    e.add_argument("--compile", action="store_true", help="torch.compile a planning decision")
    e.add_argument("--no-cuda-graph", action="store_true", help="on CUDA, do not capture decisions as graphs")
    e.add_argument("--bf16", action="store_true", help="plan in bfloat16 (faster; not the paper's precision)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=_eval)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command, turning the method's known errors into a message and exit 2."""
    from dlite.checkpoint import CheckpointError
    from dlite.d4rl import DatasetError
    from dlite.pipeline import ExistingRunError
    from dlite.reflow import PairsError

    try:
        return args.func(args)
    except (ConfigError, DatasetError, CheckpointError, ExistingRunError, PairsError, ValueError) as e:
        print(f"dlite: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dlite", description="DiffuserLite, the method")
    add_commands(p.add_subparsers(dest="command", required=True))
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
