"""A durable, ordered outbox of writes to the server for one run attempt.

Training must never wait on the network, and a server that is down for a while
must not lose a metric point: every write is appended to a journal file first and
a background thread delivers the journal in order, retrying until the server is
back. The server's upserts make a re-delivery after a crash harmless.

No single write may block the queue: a write the server refuses, or one that fails in
any other way, is logged, reported as a run event and dropped. When the attempt is
fenced off (409) the other writes are dropped, but metric points still go out: the
server keeps those the run has no point for (docs/worker-protocol.md), and undelivered
points of an earlier attempt in this folder are sent again by the next one.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

import httpx

from app.protocol import metric_point
from dlite.files import atomic_path
from worker.client import ServerClient, ServerUnavailable, StaleAttempt

log = logging.getLogger(__name__)


class Outbox:
    def __init__(
        self, client: ServerClient, run_id: int, attempt: int, folder: Path, max_backoff_s: float = 10.0
    ) -> None:
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
        self._adopt_earlier_points(folder)
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

    def _adopt_earlier_points(self, folder: Path) -> None:
        """Metric points an earlier attempt journaled but never delivered (it was fenced off,
        or its process died) go out first, still naming their attempt, so the server only
        fills steps the run has no point for."""
        for journal in sorted(folder.glob("outbox-*.jsonl")):
            m = re.fullmatch(r"outbox-(\d+)\.jsonl", journal.name)
            if not m or int(m.group(1)) >= self.attempt:
                continue
            acked_file = journal.with_suffix(".acked")
            acked = int(acked_file.read_text()) if acked_file.exists() else 0
            last = acked
            for line in journal.read_text().splitlines():
                try:
                    seq, path, body = json.loads(line)
                except ValueError:
                    continue
                last = max(last, seq)
                if seq > acked and path == "metrics":
                    self._append(path, body)
            _write_atomic(acked_file, str(last))

    def post(self, path: str, body: dict[str, Any]) -> None:
        """Journal a fenced write to /api/runs/{id}/{path}; returns at once."""
        self._append(path, {**body, "attempt": self.attempt})

    def _append(self, path: str, body: dict[str, Any]) -> None:
        with self._cond:
            self._seq += 1
            entry = (self._seq, path, body)
            with open(self.journal, "a") as f:
                f.write(json.dumps(entry) + "\n")
            self._pending.append(entry)
            self._cond.notify()

    def upload(self, name: str, file: Path, content_type: str) -> None:
        """Journal the upload of a run artifact kept at `file` (which must stay there): in
        order with the other writes, and retried through an outage like them."""
        self.post(f"artifacts/{name}", {"file": str(file), "content_type": content_type})

    def metrics(self, step: int, values: dict[str, float], wall_time: float) -> None:
        """Non-finite values (a diverging loss) travel as null plus their name: JSON has no NaN."""
        self.post("metrics", {"points": [metric_point(k, step, v, wall_time) for k, v in values.items()]})

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
                response = self._send(path, body)
                if path == "metrics" and body["attempt"] == self.attempt and response.json().get("stale"):
                    self._fenced_off("the server kept its metric points only where the run had none")
            except ServerUnavailable as e:
                log.warning("server unavailable, will retry: %s", e)
                with self._cond:
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            except StaleAttempt as e:
                self._fenced_off(f"{path} dropped: {e}")
            except Exception as e:  # one bad write (refused, unencodable, ...) must not block the rest
                log.exception("could not deliver %s to run %s; dropped it", path, self.run_id)
                if path != "events" and not self.lost.is_set():  # a failed report is not reported again
                    self.post(
                        "events",
                        {
                            "level": "error",
                            "message": (
                                f"worker could not deliver a {path} write ({type(e).__name__}: {str(e)[:500]}); "
                                f"it was dropped and later writes go on; the worker log has the details"
                            ),
                        },
                    )
            backoff = 0.5
            with self._cond:
                self._pending.pop(0)
                _write_atomic(self.acked_file, str(seq))
                self._cond.notify_all()

    def _send(self, path: str, body: dict[str, Any]) -> httpx.Response:
        url = f"/api/runs/{self.run_id}/{path}"
        if path.startswith("artifacts/"):
            return self.client.upload(url, Path(body["file"]), body["content_type"], body["attempt"])
        return self.client.request("POST", url, body)

    def _fenced_off(self, detail: str) -> None:
        if not self.lost.is_set():
            log.error("attempt %s of run %s was fenced off: %s", self.attempt, self.run_id, detail)
        self.lost.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything journaled so far is delivered or dropped (a fenced-off
        attempt drops all but its metric points at once)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def close(self, timeout: float | None = None) -> bool:
        delivered = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(1.0)
        return delivered


def _write_atomic(path: Path, text: str) -> None:
    with atomic_path(path, sync=False) as tmp:  # per acknowledged batch: a rename, no fsync
        tmp.write_text(text)
