"""Keeps the lease of the run being worked on, and collects the server's commands."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from worker.client import ServerClient, ServerUnavailable, StaleAttempt

log = logging.getLogger(__name__)


class Heartbeat:
    """Beats every lease/3 seconds; a 409 sets `lost`, commands go to `on_command`."""

    def __init__(
        self, client: ServerClient, run_id: int, attempt: int, lease_s: float, on_command: Callable[[int, str], None]
    ) -> None:
        self.client, self.run_id, self.attempt = client, run_id, attempt
        self.interval = max(lease_s / 3, 0.2)
        self.on_command = on_command
        self.step = 0
        self.steps_per_s: float | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{run_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                answer = self.client.heartbeat(self.run_id, self.attempt, self.step, self.steps_per_s)
                for command in answer.commands:
                    self.on_command(command.id, command.kind)
            except StaleAttempt:
                self.lost.set()
                return
            except ServerUnavailable as e:
                log.warning("heartbeat failed, training goes on: %s", e)
            except Exception:  # a bad command handler must not end the lease
                log.exception("heartbeat command handling failed")
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
