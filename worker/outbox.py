"""A durable, ordered outbox of writes to the server for one run attempt.

Training must never wait on the network, and a server that is down for a while
must not lose a metric point: every write is appended to a journal file first and
a background thread delivers the journal in order, retrying until the server is
back. The server's upserts make a re-delivery after a crash harmless.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from worker.client import RejectedWrite, ServerClient, ServerUnavailable, StaleAttempt

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, client: ServerClient, run_id: int, attempt: int, folder: Path,
                 max_backoff_s: float = 10.0) -> None:
        self.client, self.run_id, self.attempt = client, run_id, attempt
        folder.mkdir(parents=True, exist_ok=True)
        self.journal = folder / f"outbox-{attempt}.jsonl"
        self.acked_file = folder / f"outbox-{attempt}.acked"
        self.max_backoff_s = max_backoff_s
        self.lost = threading.Event()
        self._cond = threading.Condition()
        self._pending: list[tuple[int, str, dict[str, Any]]] = []
        self._seq = 0
        self._closing = False
        self._load()
        self._thread = threading.Thread(target=self._deliver, name=f"outbox-{run_id}", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        """Re-queue what an earlier process of this attempt journaled but did not deliver."""
        acked = int(self.acked_file.read_text()) if self.acked_file.exists() else 0
        if self.journal.exists():
            for line in self.journal.read_text().splitlines():
                try:
                    seq, path, body = json.loads(line)
                except ValueError:
                    continue  # a line torn by a crash mid-write was never acknowledged to anyone
                self._seq = max(self._seq, seq)
                if seq > acked:
                    self._pending.append((seq, path, body))

    def post(self, path: str, body: dict[str, Any]) -> None:
        """Journal a fenced write to /api/runs/{id}/{path}; returns at once."""
        with self._cond:
            self._seq += 1
            entry = (self._seq, path, {**body, "attempt": self.attempt})
            with open(self.journal, "a") as f:
                f.write(json.dumps(entry) + "\n")
            self._pending.append(entry)
            self._cond.notify()

    def metrics(self, step: int, values: dict[str, float], wall_time: float) -> None:
        self.post("metrics", {"points": [{"key": k, "step": step, "value": v, "wall_time": wall_time}
                                         for k, v in values.items()]})

    def _deliver(self) -> None:
        backoff = 0.5
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                seq, path, body = self._pending[0]
            try:
                self.client.request("POST", f"/api/runs/{self.run_id}/{path}", body)
            except ServerUnavailable as e:
                log.warning("server unavailable, will retry: %s", e)
                with self._cond:
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            except StaleAttempt as e:
                log.error("attempt %s of run %s is stale: %s", self.attempt, self.run_id, e)
                with self._cond:
                    self.lost.set()
                    self._cond.notify_all()
                return
            except RejectedWrite as e:
                log.error("server rejected %s: %s", path, e)
            backoff = 0.5
            with self._cond:
                self._pending.pop(0)
                tmp = self.acked_file.with_suffix(".tmp")
                tmp.write_text(str(seq))
                os.replace(tmp, self.acked_file)
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything journaled so far is delivered (or the lease is lost)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending or self.lost.is_set(), timeout)

    def close(self, timeout: float | None = None) -> bool:
        delivered = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(1.0)
        return delivered
