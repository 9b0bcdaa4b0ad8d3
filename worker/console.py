"""The run page's console: while the worker works on a run, its log records (any thread,
any library, at the level the worker logs) go to the server through the run's outbox.

Each record is redacted as events are (worker.backup.redact) before it is journaled, so a
token never reaches the disk journal or the server. A traceback stays with its record,
one console entry that the page folds under its exception line.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from app.protocol import CONSOLE_TEXT
from worker.backup import redact

HEAD = 1_000
"""Characters kept from the start of an over-long entry; the rest of the room goes to its end,
where a traceback names the exception."""
LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning"}


class ConsoleCapture(logging.Handler):
    """Attach it to the root logger for the duration of a run (`attach`, `detach`)."""

    def __init__(self, post: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(logging.INFO)
        self.post = post
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName and record.threadName.startswith("outbox-"):
            return  # the outbox's own delivery trouble would be one more write for it to deliver, forever
        try:
            text = bounded(redact(self.format(record)))
            level = LEVELS.get(record.levelno, "error" if record.levelno > logging.WARNING else "debug")
            self.post({"lines": [{"uid": uuid.uuid4().hex, "ts": record.created, "level": level, "text": text}]})
        except Exception:
            self.handleError(record)

    def attach(self) -> None:
        logging.getLogger().addHandler(self)

    def detach(self) -> None:
        logging.getLogger().removeHandler(self)


def bounded(text: str, limit: int = CONSOLE_TEXT) -> str:
    """At most `limit` characters: the start and the end of a longer text, with how much
    was left out between them."""
    if len(text) <= limit:
        return text
    marker = "\n… {} characters left out …\n"
    cut = len(text) - limit + len(marker.format(len(text)))  # the marker's count has no more digits than that
    return text[:HEAD] + marker.format(cut) + text[HEAD + cut :]
