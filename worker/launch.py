"""`dlite launch`: N lab workers on whatever clouds or clusters SkyPilot reaches, as managed jobs.

SkyPilot provisions the machines, relaunches a preempted spot machine and cleans up; this module only
turns deploy/skypilot/worker.yaml into one task per worker with this lab's server, version and tokens,
says what that costs when SkyPilot's catalog knows, and hands the tasks to `sky.jobs.launch`. Nothing
here provisions anything, so whatever SkyPilot supports (a cloud, Kubernetes, Slurm) works unchanged.

The tokens travel only as SkyPilot secrets, which SkyPilot keeps out of its logs and dashboards; this
module never prints or logs them: what it shows of a secret is whether it is set.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

TASK_FILE = Path(__file__).resolve().parents[1] / "deploy" / "skypilot" / "worker.yaml"
INSTALL_HINT = "pip install 'diffuserlite-lab[cloud]'"
JOB_PREFIX = "dlite-worker"
DEFAULT_GPU = "T4"
MAX_WORKERS = 100
"""A typo's ceiling ("--workers 300" for 30): more than this is launched by running the command again."""
SECRET_NAMES = ("DLITE_TOKEN", "HF_TOKEN")
CLUSTER_INFRAS = frozenset({"kubernetes", "ssh", "slurm"})
"""Infras that are the user's own machines: SkyPilot's catalog has no price for them."""
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})


class LaunchError(Exception):
    """What stops a launch before anything starts, worded as what to do about it."""


@dataclass(frozen=True)
class LaunchPlan:
    """What `dlite launch` was asked for, before SkyPilot turns it into tasks."""

    workers: int
    gpu: str
    spot: bool | None
    """None: spot where the infra has it (the default), else on-demand."""
    infra: str | None
    server: str
    version: str | None
    install: str | None
    task_file: Path


@dataclass(frozen=True)
class Price:
    """One worker's hourly price as SkyPilot's catalog gives it."""

    dollars_per_hour: float
    cloud: str
    instance_type: str


def import_sky() -> Any:
    """SkyPilot is an optional extra: without it, say the one command that brings it."""
    try:
        import sky
    except ImportError as e:
        raise LaunchError(
            f"dlite launch needs SkyPilot, which is not installed here ({e}): run {INSTALL_HINT}"
        ) from None
    return sky


def lab_version() -> str | None:
    """The installed lab's version, which pyproject.toml sets: workers must run the server's code."""
    try:
        return importlib.metadata.version("diffuserlite-lab")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_server_url(url: str) -> list[str]:
    """Refuse a URL no cloud machine can reach; return warnings for one that leaks the token."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LaunchError(
            f"--server {url!r} is not an http(s) URL: give the server's public address, e.g. https://lab.example.org"
        )
    host = parts.hostname
    if host in LOCAL_HOSTS or host.startswith("127."):
        raise LaunchError(
            f"--server {url} is this machine's loopback address, which a cloud machine cannot "
            "reach: give the server's public address (docs/many-gpus.md: TLS or cloudflared)"
        )
    if parts.scheme == "http":
        return [
            f"{url} is plain HTTP: the workers' token crosses the network readable; put TLS in front of "
            "the server (docs/many-gpus.md)"
        ]
    return []


def resolve_secrets(env: Mapping[str, str], token: str | None, hf_token: str | None) -> dict[str, str]:
    """Flags first, then the environment; HF_TOKEN may be empty (runs without a hub_repo need none)."""
    return {
        "DLITE_TOKEN": token or env.get("DLITE_TOKEN", ""),
        "HF_TOKEN": hf_token or env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN", ""),
    }


def spot_supported(sky: Any, infra: str | None) -> bool | None:
    """Whether the named infra sells spot machines; None when SkyPilot cannot tell (no infra, or
    that cloud's SDK is missing), and the optimizer then picks among the clouds that do."""
    if not infra:
        return None
    resources = sky.Resources(infra=infra)
    if resources.cloud is None:
        return None
    try:
        resources.cloud.check_features_are_supported(resources, {sky.clouds.CloudImplementationFeatures.SPOT_INSTANCE})
    except sky.exceptions.NotSupportedError:
        return False
    except Exception:  # e.g. that cloud's SDK is not installed: SkyPilot says so at launch
        return None
    return True


def resolve_spot(sky: Any, plan: LaunchPlan) -> tuple[bool, list[str]]:
    """Spot unless asked otherwise or the infra has none; an explicit --spot where there is none is an error."""
    supported = spot_supported(sky, plan.infra)
    if plan.spot is None:
        if supported is False:
            return False, [f"{plan.infra} has no spot machines: on-demand"]
        return True, []
    if plan.spot and supported is False:
        raise LaunchError(f"{plan.infra} has no spot machines: pass --on-demand")
    return plan.spot, []


def build_task(sky: Any, plan: LaunchPlan, use_spot: bool, secrets: Mapping[str, str], index: int) -> Any:
    """One worker's task: the task file through SkyPilot's own parser and schema, with this launch's
    server, version, name, resources and secrets. A fresh task per worker, so each keeps its name."""
    import yaml

    try:
        config = yaml.safe_load(plan.task_file.read_text())
    except OSError as e:
        raise LaunchError(
            f"cannot read the task file {plan.task_file} ({e}): pass --task with the path of "
            "deploy/skypilot/worker.yaml from the lab's repository"
        ) from None
    envs = [("DLITE_SERVER", plan.server), ("DLITE_WORKER_NAME", f"{JOB_PREFIX}-{index}")]
    if plan.version:
        envs.append(("DLITE_VERSION", plan.version))
    if plan.install:
        envs.append(("DLITE_INSTALL", plan.install))
    # secrets_overrides, as `sky jobs launch --secret` does: the file's null secrets become these values
    # (a null left alone would be a reference to a secret stored on SkyPilot's API server)
    task = sky.Task.from_yaml_config(config, env_overrides=envs, secrets_overrides=list(secrets.items()))
    (file_resources,) = task.resources  # the task file names one set of resources
    resources = dict(file_resources.to_yaml_config())
    resources.update(accelerators=plan.gpu, use_spot=use_spot)
    if plan.infra:
        resources["infra"] = plan.infra
    task.set_resources(resources)
    return task


def _is_set(value: Any) -> bool:
    """SkyPilot holds a secret as a SecretStr: looked at for emptiness only, never shown."""
    return bool(value.get_secret_value() if hasattr(value, "get_secret_value") else value)


def redacted_config(task: Any) -> dict[str, Any]:
    """The task as YAML would hold it, each secret shown only as set or not: what a dry run prints,
    and still a task SkyPilot accepts."""
    config = {k: v for k, v in task.to_yaml_config().items() if not k.startswith("_") and v not in ({}, None)}
    config["secrets"] = {name: "<set>" if _is_set(value) else "<not set>" for name, value in task.secrets.items()}
    return config


def to_yaml(config: Mapping[str, Any]) -> str:
    """YAML with the setup and run scripts as readable literal blocks, as in the task file."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump(dict(config), Dumper=Dumper, sort_keys=False, width=120)


def enabled_clouds(sky: Any) -> list[str]:
    """The clouds and clusters `sky check` enabled, asked of SkyPilot's API server (which SkyPilot starts
    locally when none is configured)."""
    from sky.client import sdk

    try:
        return [str(cloud) for cloud in sky.get(sdk.enabled_clouds())]
    except Exception as e:  # whatever failed (no API server, no credentials), the advice is the same
        raise LaunchError(
            f"SkyPilot could not say which clouds are enabled ({type(e).__name__}: {e}): "
            "run `sky check`, which tells what each cloud or cluster needs"
        ) from None


def check_enabled(sky: Any, plan: LaunchPlan, clouds: list[str]) -> None:
    """No enabled infra, or not the one asked for: `sky check` says which credentials are missing."""
    if not clouds:
        raise LaunchError(
            "no cloud or cluster is enabled for SkyPilot: run `sky check`, which tells what "
            "credentials each one needs, then launch again"
        )
    if plan.infra:
        cloud = sky.Resources(infra=plan.infra).cloud
        if cloud is not None and str(cloud).lower() not in {c.lower() for c in clouds}:
            raise LaunchError(
                f"{cloud} is not enabled for SkyPilot (enabled: {', '.join(clouds)}): "
                f"run `sky check {str(cloud).lower()}`"
            )


def _cloud_price(sky: Any, resources: Any, cloud: str) -> Price | None:
    accelerators = resources.accelerators or {}
    if len(accelerators) != 1:
        return None
    ((name, count),) = accelerators.items()
    types, _ = sky.catalog.get_instance_type_for_accelerator(
        name, count, use_spot=resources.use_spot, region=resources.region, zone=resources.zone, clouds=cloud
    )
    if not types:
        return None
    infra = cloud if resources.region is None else f"{cloud}/{resources.region}"
    launchable = sky.Resources(
        infra=infra, instance_type=types[0], accelerators=accelerators, use_spot=resources.use_spot
    )
    return Price(launchable.get_cost(3600), str(launchable.cloud), types[0])


def hourly_price(sky: Any, resources: Any, clouds: list[str]) -> tuple[Price | None, str]:
    """The cheapest hourly price of one worker over the enabled clouds it may land on, from SkyPilot's
    price catalog; None with the reason when the catalog has none (a cluster, an offline machine)."""
    candidates = [str(resources.cloud).lower()] if resources.cloud is not None else [c.lower() for c in clouds]
    prices, reasons = [], []
    for cloud in candidates:
        if cloud in CLUSTER_INFRAS:
            reasons.append(f"{cloud} is your own cluster, with no price in SkyPilot's catalog")
            continue
        try:
            price = _cloud_price(sky, resources, cloud)
        except Exception as e:  # a price is a courtesy: never a reason not to launch
            reasons.append(f"{cloud}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
            continue
        if price is None:
            reasons.append(f"{cloud} lists no {resources.get_accelerators_str()}")
        else:
            prices.append(price)
    if prices:
        return min(prices, key=lambda p: p.dollars_per_hour), ""
    return None, "SkyPilot cannot tell: " + ("; ".join(reasons) or "no cloud to price")


def describe(plan: LaunchPlan, task: Any, price: Price | None, why: str, clouds: list[str] | None) -> list[str]:
    """What will run, where, for how much, said before anything starts."""
    (resources,) = task.resources
    envs, n = task.envs, plan.workers
    names = f"{JOB_PREFIX}-1" if n == 1 else f"{JOB_PREFIX}-1..{n}"
    where = plan.infra or (f"the cheapest enabled one of {', '.join(clouds)}" if clouds else "any cloud SkyPilot picks")
    kind = "spot, relaunched when preempted" if resources.use_spot else "on-demand"
    lines = [
        f"dlite launch: {n} managed job{'s' if n > 1 else ''} ({names}), each one worker on "
        f"{resources.get_accelerators_str()}, {kind}",
        f"  where:   {where}",
        f"  server:  {envs['DLITE_SERVER']}",
        f"  lab:     {envs.get('DLITE_INSTALL') or 'diffuserlite-lab==' + envs['DLITE_VERSION']}",
        "  secrets: " + ", ".join(f"{k} {'<set>' if _is_set(v) else '<not set>'}" for k, v in task.secrets.items()),
    ]
    if price is not None:
        lines.append(
            f"  price:   about ${price.dollars_per_hour:.2f}/hour a worker, "
            f"${price.dollars_per_hour * n:.2f}/hour for {n} ({price.cloud} {price.instance_type}, "
            "SkyPilot's catalog; spot prices move), plus SkyPilot's jobs controller (a small CPU VM)"
        )
    else:
        lines.append(f"  price:   {why} (`sky gpus list {resources.get_accelerators_str()}` lists each cloud's)")
    return lines


def launch(
    sky: Any,
    plan: LaunchPlan,
    secrets: Mapping[str, str],
    dry_run: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Check, describe, then (unless a dry run) launch one managed job per worker; the exit status.
    A dry run asks no API server, cloud or price catalog anything: it needs no account and no network."""
    out, err = out or sys.stdout, err or sys.stderr
    use_spot, notes = resolve_spot(sky, plan)
    notes = check_server_url(plan.server) + notes
    if not secrets.get("DLITE_TOKEN"):
        if not dry_run:
            raise LaunchError(
                "no token for the workers: set DLITE_TOKEN to the token the server printed (or pass --token)"
            )
        notes.append("DLITE_TOKEN is not set: a launch needs it")
    if not secrets.get("HF_TOKEN"):
        notes.append(
            "HF_TOKEN is not set: runs with a hub_repo cannot back up, so a preempted worker's run "
            "starts over instead of resuming"
        )
    tasks = [build_task(sky, plan, use_spot, secrets, i) for i in range(1, plan.workers + 1)]
    if dry_run:
        clouds, price, why = None, None, "not looked up in a dry run, which would download SkyPilot's catalog"
    else:
        clouds = enabled_clouds(sky)
        check_enabled(sky, plan, clouds)
        price, why = hourly_price(sky, next(iter(tasks[0].resources)), clouds)
    for note in notes:
        print(f"note: {note}", file=err)
    print("\n".join(describe(plan, tasks[0], price, why, clouds)), file=out)
    if dry_run:
        others = "" if plan.workers == 1 else " (the others differ only in DLITE_WORKER_NAME)"
        print(f"\n# the task for {JOB_PREFIX}-1{others}; nothing was launched", file=out)
        print(to_yaml(redacted_config(tasks[0])), end="", file=out)
        return 0
    requests = []
    for i, task in enumerate(tasks, start=1):
        name = f"{JOB_PREFIX}-{i}"
        try:
            requests.append((name, sky.jobs.launch(task, name=name)))
        except Exception as e:  # one refused job must not hide the others' outcome
            print(f"{name}: not launched: {type(e).__name__}: {e}", file=err)
    failed = plan.workers - len(requests)
    for name, request_id in requests:
        try:
            job_ids, _ = sky.stream_and_get(request_id)
        except Exception as e:
            print(f"{name}: not launched: {type(e).__name__}: {e}", file=err)
            failed += 1
            continue
        print(f"{name}: launched (managed job {', '.join(map(str, job_ids or [])) or '?'})", file=out)
    print(
        f"{plan.workers - failed} of {plan.workers} launched; watch them with `sky jobs queue` and the lab's "
        f"dashboard, stop one with `sky jobs cancel -n {JOB_PREFIX}-1`",
        file=out,
    )
    return 1 if failed else 0


def add_command(sub: Any) -> None:
    """Register `dlite launch` on the top-level subparsers."""
    p = sub.add_parser(
        "launch",
        help="launch workers on clouds or clusters through SkyPilot (managed jobs)",
        description="Launch N lab workers as SkyPilot managed jobs (docs/many-gpus.md). "
        f"Needs {INSTALL_HINT} and, except for --dry-run, a cloud `sky check` enabled.",
    )
    p.add_argument("--workers", type=_worker_count, default=1, help="how many workers, one managed job each")
    p.add_argument(
        "--gpu",
        default=DEFAULT_GPU,
        help="accelerator per worker as SkyPilot names it, e.g. T4, L4, A10G, A100:2 (`sky gpus list`; default: T4)",
    )
    spot = p.add_mutually_exclusive_group()
    spot.add_argument(
        "--spot",
        dest="spot",
        action="store_true",
        default=None,
        help="spot machines, relaunched when preempted (the default where the infra has them)",
    )
    spot.add_argument("--on-demand", dest="spot", action="store_false", help="on-demand machines")
    p.add_argument(
        "--infra", help="where: aws, gcp, azure, k8s, aws/us-east-1, ... (default: the cheapest enabled one)"
    )
    p.add_argument(
        "--server", default=os.environ.get("DLITE_SERVER"), help="the server's public URL (default: $DLITE_SERVER)"
    )
    p.add_argument("--token", help="the lab's token (default: $DLITE_TOKEN; a flag lands in shell history)")
    p.add_argument("--hf-token", help="Hugging Face token for backups (default: $HF_TOKEN)")
    p.add_argument(
        "--install",
        default=os.environ.get("DLITE_INSTALL") or None,
        help="pip requirement the workers install, e.g. git+https://github.com/<you>/diffuserlite-lab"
        "@<tag> (default: $DLITE_INSTALL, else diffuserlite-lab==<this version>)",
    )
    p.add_argument("--task", type=Path, default=TASK_FILE, help=f"the SkyPilot task file (default: {TASK_FILE})")
    p.add_argument("--dry-run", action="store_true", help="print the task, launch nothing (no cloud account)")
    p.set_defaults(func=main_from_args)


def _worker_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text}: give between 1 and {MAX_WORKERS} workers")
    return value


def main_from_args(args: argparse.Namespace) -> int:
    """`dlite launch`: every refusal is one line on stderr and exit status 2."""
    try:
        if not args.server:
            raise LaunchError("no server: pass --server with the server's public URL (or set DLITE_SERVER)")
        sky = import_sky()
        plan = LaunchPlan(
            workers=args.workers,
            gpu=args.gpu,
            spot=args.spot,
            infra=args.infra,
            server=args.server.rstrip("/"),
            version=lab_version(),
            install=args.install,
            task_file=args.task,
        )
        return launch(sky, plan, resolve_secrets(os.environ, args.token, args.hf_token), args.dry_run)
    except LaunchError as e:
        print(f"dlite launch: {e}", file=sys.stderr)
        return 2
