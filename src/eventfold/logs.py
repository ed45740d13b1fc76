"""Structured JSON logs, one object per line, carrying the request's correlation id."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

#: The X-Request-ID of the request (or of the event's correlation id) being handled.
correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON with its ``extra`` fields (tenant, event_id, …)."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line for ``record``."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        cid = correlation_id.get()
        if cid:
            doc["correlation_id"] = cid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class RepeatFilter(logging.Filter):
    """Lets one record of a message through per ``window`` seconds for the loggers under
    ``prefixes``; the next one through carries ``repeated``, the count held back.

    A client library retrying an unreachable broker logs the same failure hundreds of
    times a second (aiokafka: every reconnect, metadata refresh and fetch), burying the
    lines that say what the process is doing. A message is its logger and its format
    string, so the changing arguments (an attempt count, a node id) do not make a repeat
    new.
    """

    #: Distinct messages remembered; beyond it the oldest are forgotten (let through again).
    MAX_KEYS = 1024

    def __init__(
        self,
        prefixes: tuple[str, ...],
        window: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._window = window
        self._clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # -> (let through at, held)

    def filter(self, record: logging.LogRecord) -> bool:
        """True when ``record`` is written (adding ``repeated`` when some were held back)."""
        if not record.name.startswith(self._prefixes):
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self._window:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.repeated = seen[1]
        self._seen.pop(key, None)
        if len(self._seen) >= self.MAX_KEYS:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = (now, 0)
        return True


#: Loggers whose repeats are held back (:class:`RepeatFilter`): the Kafka clients.
REPEATING = ("aiokafka", "kafka")


def setup_logging(level: str = "INFO") -> None:
    """Route every logger to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    # On the handler, not the loggers: a logger's filter misses its children's records.
    handler.addFilter(RepeatFilter(REPEATING))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries are chatty at INFO about every (re)connection.
    for noisy in ("aiokafka", "kafka", "aiohttp.access", "botocore", "aiobotocore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
