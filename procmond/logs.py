"""Logging set-up: readable text or one JSON object per line, on stderr.

A log line's message often carries foreign text: an agent's rejection
message, a request's reason, an id, a command line. Protocol section 10: it
never reaches the log with its control characters intact. The text format
escapes the message (:func:`procmond.text_safety.escape`: a forged message
``"x\\n12:00:00 ERROR procmond: ..."`` stays one line, its newline shown as
``\\x0a``); the JSON format is escaped by JSON itself (``ensure_ascii``: every
control and non-ASCII character as ``\\uNNNN``). A traceback keeps its own
line breaks: it is the daemon's, not a peer's.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime

from procmond.text_safety import escape

#: The text format's line: time, level, logger, the escaped message.
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # json.dumps escapes every control character (ensure_ascii, the default).
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class EscapingFormatter(logging.Formatter):
    """The text format, with the message's controls and bidi overrides escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape(record.message)
        return super().formatMessage(record)


class RateLimitedLog:
    """Log each kind (``key``) of message at most once per ``interval`` seconds.

    What is held back is counted and reported with the next line of that kind
    (``(N similar suppressed)``), so a condition that repeats every cycle or
    every heartbeat (Redis down, a flood of bad messages) is one line a while,
    not one per occurrence, and nothing is hidden.
    """

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(
        self, level: int, key: str, msg: str, *args: object, exc: BaseException | None = None
    ) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg += " (%d similar suppressed)"
            args = (*args, suppressed)
        self._logger.log(level, msg, *args, exc_info=exc)

    def reset(self, key: str) -> None:
        """Let the next message of ``key`` through at once (a new episode began)."""
        self._last.pop(key, None)


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger once, for the daemon and the tools."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(EscapingFormatter(TEXT_FORMAT, "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # transitions logs every callback at INFO; our actor logs each move itself.
    logging.getLogger("transitions").setLevel(logging.WARNING)
