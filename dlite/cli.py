"""The method's subcommands of the `dlite` command: train, reflow, eval and check.

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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlite.config import PLAN_ACCEL, ConfigError, from_dict, parse_overrides

if TYPE_CHECKING:  # the commands import torch only when they run
    from dlite.config import Config
    from dlite.dataset import WindowDataset
    from dlite.device_check import CheckReport
    from dlite.model import DiffuserLite
    from dlite.planner import Planner


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


def _checked(cfg: Config, data: WindowDataset, out: Path, resumes: dict[str, Any] | None) -> CheckReport:
    """The device check a run starts with: its table on stderr, then the paths it chose.
    Its journal lives in the run's folder, so a path that crashed is not tried again there;
    a resumed checkpoint's path (`resumes`: its state) is kept when it passes."""
    from dlite.device_check import JOURNAL_FILE, run_check

    out.mkdir(parents=True, exist_ok=True)
    report = run_check(
        cfg,
        data,
        journal_file=out / JOURNAL_FILE,
        resumes=(resumes or {}).get("train_path"),
        progress=lambda line: print(f"device check: {line}", file=sys.stderr),
    )
    print(report.table(), file=sys.stderr)
    return report


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
    from dlite.pipeline import build_trainer, default_device, load_dataset, refuse_existing, task_for

    overrides = parse_overrides(args.set)
    if args.steps is not None:
        overrides.update(diffusion_gradient_steps=args.steps, invdyn_gradient_steps=args.steps)
    out = Path(args.out)
    found = newest_readable(out) if args.resume else None
    cfg = from_dict({**saved_config(found[1]), **overrides}) if found else from_dict(task_for(args.dataset, overrides))
    device = args.device or default_device()
    data = load_dataset(args.dataset, cfg, device, _download_bar())
    refuse_existing(out, args.resume)
    trainer = build_trainer(
        data, cfg, out, args.resume, found, _checked(cfg, data, out, found and found[1]).chosen["train"]
    )
    resumed = found[0] if found else None
    print(
        f"{cfg.task}: {data.n_episodes} episodes on {device}; "
        + (f"resumed from {resumed} (step {trainer.step})" if resumed else "started fresh"),
        file=sys.stderr,
    )
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
    resumes = checkpoint.newest_readable(out) if args.resume else None
    path = _checked(cfg, data, out, resumes and resumes[1]).chosen["train"]  # before the pairs: a path that
    # cannot run says so now
    interrupted = _interruptible()
    store = PairStore(out / "pairs", PairSpec.of(cfg, r1, data))
    if not store.complete:
        bar = tqdm(
            total=store.spec.total * len(cfg.horizons),
            initial=store.pairs_done,
            unit="pair",
            desc="reflow pairs",
            dynamic_ncols=True,
        )

        def progress(level: int, done: int, total: int) -> None:
            bar.update(level * total + done - bar.n)

        try:
            finished = store.generate(r1, data, progress, interrupted.is_set)
        finally:
            bar.close()
        if not finished:
            print(f"interrupted; {store.pairs_done} pairs kept in {store.folder}, run again to go on", file=sys.stderr)
            return 130
    trainer = ReflowTrainer(cfg, data, store, r1, state["step"], out, path)
    resumed = trainer.resume_latest() if args.resume else None
    print(
        f"{cfg.task}: reflow of {source} on {device}; "
        + (f"resumed from {resumed} (step {trainer.step})" if resumed else "started fresh"),
        file=sys.stderr,
    )
    return _fit_with_progress(trainer, out, interrupted)


def _checked_planning(
    model: DiffuserLite, cfg: Config, variant: str, envs: int, overrides: dict[str, Any], quiet: bool
) -> str:
    """The planning path for this checkpoint on this device, verified on its own weights."""
    from dlite import device_check

    names, _ = device_check.plan_paths(cfg.plan_accel, False, next(model.parameters()).device)
    found, _ = device_check.check_planning(model, cfg, names, (envs,), (variant,), overrides)  # type: ignore[arg-type]
    choice = device_check.choose(found, cfg.plan_accel, "plan_accel", device_check.PLAN_REFERENCE)
    if not quiet:
        for r in found:
            speed = "" if r.ms is None else f", {r.ms:.2f} ms for 1 env, {r.ms_batch:.2f} ms for {envs}"
            print(
                f"planning path {r.name}: {r.status}{speed}" + (f" ({r.detail})" if r.detail else ""), file=sys.stderr
            )
        print(f"planning with {choice}", file=sys.stderr)
    return choice


def _eval(args: argparse.Namespace) -> int:
    from dlite.device_check import PLANNERS
    from dlite.evaluate import evaluate
    from dlite.pipeline import default_device
    from dlite.planner import checkpoint_model

    model, cfg, variant = checkpoint_model(Path(args.checkpoint), args.device or default_device())
    cfg = cfg.replace(**({"plan_accel": args.accel} if args.accel else {}))
    overrides = dict(
        w_cfg=args.w_cfg,
        target_return=args.target_return,
        temperature=args.temperature,
        sampling_steps=args.sampling_steps,
    )
    choice = _checked_planning(model, cfg, variant, args.envs, overrides, quiet=args.json)
    planner = PLANNERS[choice](model, cfg, variant, **overrides)
    result = evaluate(planner, args.envs, args.episodes, seed=args.seed, max_steps=args.max_steps)
    if args.json:
        print(json.dumps({**result.to_dict(), "decisions_per_s": result.decisions_per_s, "hz_1env": result.hz_1env}))
    else:
        print(
            f"{result.task} {result.variant} ({planner.sampling_steps} sampling steps): normalised score "
            f"{result.score_mean:.1f} ± {result.score_std:.1f} (std over {len(result.scores)} episodes); "
            f"planning {result.hz_1env:.0f} Hz for one env, {result.decisions_per_s:.0f} decisions/s for "
            f"{args.envs} envs on {result.device}; {result.wall_s:.0f} s"
        )
    if args.record:
        _record(planner, args, first_unused_seed=args.seed + args.envs * args.episodes)
    return 0


def _record(planner: Planner, args: argparse.Namespace, first_unused_seed: int) -> None:
    """One more episode of the evaluated checkpoint, on a seed no evaluated episode used, as
    `<checkpoint name>.webm` and `.plans.json` in the --record folder."""
    from dlite import checkpoint
    from dlite.record import record_episode

    path = Path(args.checkpoint)
    rec = record_episode(
        planner,
        seed=first_unused_seed,
        checkpoint_step=checkpoint.read(path)["step"],
        out_dir=Path(args.record),
        stem=path.stem,
        max_steps=args.max_steps,
    )
    print(
        f"recorded {rec.steps} steps (score {rec.score:.1f}) as {rec.video} and {rec.plans}; rendering "
        f"{rec.render_s:.1f} s, encoding {rec.encode_s:.1f} s, planning {rec.plan_s:.1f} s",
        file=sys.stderr,
    )


def _check(args: argparse.Namespace) -> int:
    import tempfile

    from dlite.dataset import WindowDataset
    from dlite.device_check import run_check
    from dlite.pipeline import default_device, load_dataset, task_for
    from dlite.synthetic import random_dataset
    from dlite.tasks import domain_of

    device = args.device or default_device()
    if args.dataset:
        cfg = from_dict(task_for(args.dataset, parse_overrides(args.set)))
        data = load_dataset(args.dataset, cfg, device, _download_bar())
    else:  # the speed depends on shapes only: random data of the task's sizes, nothing to download
        cfg = from_dict(parse_overrides(args.set))
        domain = domain_of(cfg.task)
        with tempfile.TemporaryDirectory() as tmp:
            raw = random_dataset(Path(tmp) / "random.hdf5", domain.obs_dim, domain.act_dim, 20)
        data = WindowDataset(raw, cfg, device)
    progress = (lambda _: None) if args.json else (lambda line: print(f"checking {line}", file=sys.stderr))
    report = run_check(cfg, data, every=args.all, progress=progress)  # no journal: nothing is kept
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.table())
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
    t.set_defaults(func=_train)

    r = sub.add_parser("reflow", help="DiffuserLite-R2: reflow an R1 checkpoint (pairs, then fine-tuning)")
    r.add_argument("--checkpoint", required=True, help="the R1 checkpoint to reflow")
    r.add_argument("--out", required=True, help="folder for the pairs and the R2 checkpoints")
    r.add_argument("--dataset", help="task name or HDF5 path (default: the checkpoint's task)")
    r.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    r.add_argument("--resume", action="store_true", help="continue from the newest reflow checkpoint in --out")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a reflow setting (e.g. reflow_gradient_steps=200000)",
    )
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
    e.add_argument(
        "--accel",
        choices=PLAN_ACCEL,
        help="planning path, verified against the textbook loop first (default: the checkpoint's "
        "plan_accel, auto: the fastest verified full-precision one)",
    )
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument(
        "--record",
        metavar="DIR",
        help="also record one extra episode (not scored) as DIR/<checkpoint>.webm with its plans in "
        "DIR/<checkpoint>.plans.json; needs MUJOCO_GL=egl or osmesa",
    )
    e.set_defaults(func=_eval)

    c = sub.add_parser("check", help="verify and time every training and planning path on this device")
    c.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    c.add_argument("--dataset", help="task name or HDF5 path (default: random data of the task's sizes)")
    c.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a run setting (e.g. d_model=128, train_accel=compile); default: the seed configuration",
    )
    c.add_argument(
        "--all",
        action="store_true",
        help="measure every path this device has, also those `auto` does not try (compile on a "
        "CPU, mixed precision, bf16); `chosen` is then the fastest of them all",
    )
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=_check)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command, turning the method's known errors into a message and exit 2."""
    from dlite.checkpoint import CheckpointError
    from dlite.d4rl import DatasetError
    from dlite.device_check import DeviceCheckError
    from dlite.pipeline import ExistingRunError
    from dlite.record import RenderUnavailable
    from dlite.reflow import PairsError

    try:
        return args.func(args)
    except (
        ConfigError,
        DatasetError,
        CheckpointError,
        DeviceCheckError,
        ExistingRunError,
        PairsError,
        RenderUnavailable,
        ValueError,
    ) as e:
        print(f"dlite: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dlite", description="DiffuserLite, the method")
    add_commands(p.add_subparsers(dest="command", required=True))
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
