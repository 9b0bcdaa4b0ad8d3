"""The one `dlite` command: the method's subcommands (train, reflow, eval) registered
from dlite/, the product's (up, worker, launch) from here, the top of the stack."""

from __future__ import annotations

import argparse
import os
import sys

from dlite import cli as method_cli
from worker import launch
from worker.launcher import HUB_STATE_EVERY_MINUTES, STATE_EVERY_MINUTES


def _worker(args: argparse.Namespace) -> int:
    from worker.main import main_from_args

    return main_from_args(args.server, args.token, args.work_dir, args.device, args.name, args.max_runs)


def _up(args: argparse.Namespace) -> int:
    from worker.launcher import up

    return up(
        args.host,
        args.port,
        args.data_dir,
        not args.no_worker,
        args.demo,
        args.device,
        args.tunnel,
        args.backup_dir,
        args.hub_repo,
        args.state_every_minutes,
    )


def _positive_minutes(text: str) -> float:
    value = float(text)
    if not 0.01 <= value <= 1440:
        raise argparse.ArgumentTypeError(f"{text}: give between 0.01 and 1440 minutes")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlite", description="DiffuserLite Lab")
    sub = p.add_subparsers(dest="command", required=True)
    method_cli.add_commands(sub)

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
    u.add_argument(
        "--backup-dir",
        help="save the server's database (runs, sweeps, notes, token) to this folder "
        "every few minutes, and restore it first on a machine that has none",
    )
    u.add_argument("--hub-repo", help="the same, to this private Hugging Face repo (needs HF_TOKEN)")
    u.add_argument(
        "--state-every-minutes",
        type=_positive_minutes,
        default=os.environ.get("DLITE_STATE_EVERY_MINUTES"),
        help="how often the server state is saved when it changed (default: $DLITE_STATE_EVERY_MINUTES, "
        f"else {STATE_EVERY_MINUTES:g} to a folder, {HUB_STATE_EVERY_MINUTES:g} to the Hub)",
    )
    u.set_defaults(func=_up)

    launch.add_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # recorded episodes render offscreen: EGL is a GPU's own, or Mesa's software renderer without one
    # (set before any command imports MuJoCo, which reads it once)
    os.environ.setdefault("MUJOCO_GL", "egl")
    return method_cli.run(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
