"""The worker process: register, claim the oldest queued run, execute it, repeat.

SIGTERM (Colab shutting down, Ctrl-C) stops training at the next step with a
checkpoint saved; the server's lease expiry then hands the run to the next worker.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
from pathlib import Path

import torch

from dlite.pipeline import default_device
from worker.client import RejectedWrite, Retired, ServerClient, ServerUnavailable
from worker.executor import RunExecutor
from worker.hub import HubBackup

log = logging.getLogger("worker")


def describe_device(device: str) -> str | None:
    return torch.cuda.get_device_name() if device.startswith("cuda") else None


def provider() -> str | None:
    """Where this worker runs, for the fleet page: a SkyPilot job says its cloud and region in
    SKYPILOT_CLUSTER_INFO; a Colab runtime sets COLAB_RELEASE_TAG."""
    info = os.environ.get("SKYPILOT_CLUSTER_INFO")
    if info:
        try:
            cluster = json.loads(info)
            where = "/".join(str(cluster[k]) for k in ("cloud", "region") if cluster.get(k))
        except (ValueError, TypeError, AttributeError):
            where = ""
        return f"skypilot:{where.lower()}" if where else "skypilot"
    return "colab" if os.environ.get("COLAB_RELEASE_TAG") else None


def serve(
    server: str,
    token: str,
    work_dir: Path,
    device: str | None = None,
    name: str | None = None,
    poll_s: float = 2.0,
    max_runs: int | None = None,
) -> int:
    """Work until SIGTERM/SIGINT (or after max_runs runs). Returns the number of runs done."""
    device = device or default_device()
    terminate = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: terminate.set())
    client = ServerClient(server, token)
    name = name or f"{socket.gethostname()}-{os.getpid()}"
    worker_id = None
    done = 0
    while not terminate.is_set() and (max_runs is None or done < max_runs):
        try:
            if worker_id is None:
                worker_id = client.register(name, socket.gethostname(), device, describe_device(device), provider())
                log.info("registered as %s on %s", worker_id, device)
            claim = client.claim(worker_id)
        except ServerUnavailable as e:
            log.warning("server not reachable (%s); retrying", e)
            terminate.wait(poll_s)
            continue
        except Retired as e:
            log.info("%s", e)
            worker_id = None  # the server has marked it exited already
            break
        if claim is None:
            terminate.wait(poll_s)
            continue
        log.info("claimed run %s (attempt %s, %s)", claim.run_id, claim.attempt, claim.task)
        status = RunExecutor(client, claim, work_dir, device, HubBackup, terminate).run()
        log.info("run %s: %s", claim.run_id, status)
        done += 1
    if worker_id is not None:
        try:
            client.exited(worker_id)
        except (ServerUnavailable, RejectedWrite) as e:  # it will show as lost instead
            log.warning("could not tell the server this worker exits: %s", e)
    client.close()
    return done


def main_from_args(
    server: str, token: str | None, work_dir: str, device: str | None, name: str | None, max_runs: int | None
) -> int:
    token = token or os.environ.get("DLITE_TOKEN")
    if not token:
        raise SystemExit("dlite worker: no token: pass --token or set DLITE_TOKEN")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the worker's own
    serve(server, token, Path(work_dir).expanduser(), device, name, max_runs=max_runs)
    return 0
