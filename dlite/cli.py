"""The `dlite` command line: train, eval, and the product's server and worker."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from dlite.config import ConfigError, from_dict, parse_overrides


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dlite.checkpoint import newest_readable
    from dlite.pipeline import build_trainer, default_device, load_dataset, task_for
    from dlite.train import LogRecord

    overrides = parse_overrides(args.set)
    if args.steps is not None:
        overrides.update(diffusion_gradient_steps=args.steps, invdyn_gradient_steps=args.steps)
    out = Path(args.out)
    found = newest_readable(out) if args.resume else None
    cfg = from_dict({**found[1]["config"], **overrides}) if found else from_dict(task_for(args.dataset, overrides))
    device = args.device or default_device()
    bars: list[tqdm] = []

    def progress(done: int, total: int | None) -> None:
        if not bars:
            bars.append(tqdm(desc="download", total=total, unit="B", unit_scale=True))
        bars[0].update(done - bars[0].n)

    data = load_dataset(args.dataset, cfg, device, progress)
    for bar in bars:
        bar.close()
    trainer = build_trainer(data, cfg, out, args.resume, found, args.compile, args.amp)
    resumed = found[0] if found else None
    print(f"{cfg.task}: {data.n_episodes} episodes on {device}; "
          + (f"resumed from {resumed} (step {trainer.step})" if resumed else "started fresh"), file=sys.stderr)

    class Progress:
        def __init__(self) -> None:
            self.bar = tqdm(total=cfg.total_steps, initial=trainer.step, unit="step", dynamic_ncols=True)

        def on_log(self, record: LogRecord) -> None:
            self.bar.update(record.step - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in record.losses.items()})

        def on_checkpoint(self, step: int, path: Path) -> None:
            self.bar.write(f"step {step}: saved {path}")

        def should_stop(self) -> bool:
            return interrupted.is_set()

    # Ctrl-C only raises a flag: the step in flight completes, so the checkpoint that
    # fit() saves on stopping resumes bit-exactly.
    interrupted = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    progress_cb = Progress()
    try:
        trainer.fit(callbacks=(progress_cb,))
    finally:
        progress_cb.bar.close()
    if interrupted.is_set():
        print(f"interrupted at step {trainer.step}; checkpoint saved in {out}", file=sys.stderr)
        return 130
    return 0


def _eval(args: argparse.Namespace) -> int:
    from dlite.evaluate import evaluate
    from dlite.pipeline import default_device
    from dlite.planner import Planner

    planner = Planner.from_checkpoint(Path(args.checkpoint), args.device or default_device(),
                                      w_cfg=args.w_cfg, target_return=args.target_return,
                                      temperature=args.temperature, sampling_steps=args.sampling_steps)
    result = evaluate(planner, args.envs, args.episodes, seed=args.seed, max_steps=args.max_steps)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"{result.task}: normalised score {result.score_mean:.1f} ± {result.score_std:.1f} "
              f"over {len(result.scores)} episodes; planning {result.latency_ms:.1f} ms per decision "
              f"({args.envs} envs); {result.wall_s:.0f} s")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from worker.main import main_from_args

    return main_from_args(args.server, args.token, args.work_dir, args.device, args.name, args.max_runs)


def _up(args: argparse.Namespace) -> int:
    from worker.launcher import up

    return up(args.host, args.port, args.data_dir, not args.no_worker, args.demo, args.device, args.tunnel)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlite", description="DiffuserLite Lab")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train DiffuserLite-R1 on a D4RL dataset")
    t.add_argument("--dataset", required=True, help="task name (e.g. halfcheetah-medium-expert-v2) or HDF5 path")
    t.add_argument("--out", required=True, help="folder for checkpoints")
    t.add_argument("--steps", type=int, help="gradient steps (sets both step counts)")
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    t.add_argument("--compile", action="store_true", help="torch.compile the training step (GPU speed option)")
    t.add_argument("--amp", action="store_true", help="mixed precision: bf16, or fp16 with a grad scaler")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="score a checkpoint on the -v4 MuJoCo environment")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--envs", type=int, default=50, help="parallel environments (default 50)")
    e.add_argument("--episodes", type=int, default=3, help="episodes per environment (default 3)")
    e.add_argument("--max-steps", type=int, help="step limit per episode (default: the config's)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device")
    e.add_argument("--w-cfg", type=float, help="guidance weight (default: the task's)")
    e.add_argument("--target-return", type=float, help="value condition (default: the task's)")
    e.add_argument("--temperature", type=float)
    e.add_argument("--sampling-steps", type=int)
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=_eval)

    w = sub.add_parser("worker", help="claim runs from a DiffuserLite Lab server and execute them")
    w.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    w.add_argument("--token", help="access token (default: $DLITE_TOKEN)")
    w.add_argument("--work-dir", default="~/.dlite/worker", help="checkpoints and journals")
    w.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    w.add_argument("--name", help="worker name shown on the dashboard")
    w.add_argument("--max-runs", type=int, help="exit after this many runs")
    w.set_defaults(func=_worker)

    u = sub.add_parser("up", help="start the dashboard server and one local worker")
    u.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 in Docker)")
    u.add_argument("--port", type=int, default=8000)
    u.add_argument("--data-dir", help="database, token and checkpoints (default: $DLITE_DATA_DIR or ~/.dlite)")
    u.add_argument("--no-worker", action="store_true", help="server only (workers run elsewhere)")
    u.add_argument("--demo", action="store_true", help="also queue a demo run that needs no download")
    u.add_argument("--device", help="the local worker's device (default: cuda when available)")
    u.add_argument("--tunnel", choices=["colab", "cloudflared", "ngrok"], help="also open a public URL")
    u.set_defaults(func=_up)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from dlite.checkpoint import CheckpointError
    from dlite.d4rl import DatasetError
    from dlite.pipeline import ExistingRunError

    try:
        return args.func(args)
    except (ConfigError, DatasetError, CheckpointError, ExistingRunError, ValueError) as e:
        print(f"dlite: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
