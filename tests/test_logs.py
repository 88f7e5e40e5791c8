"""procmond.logs: the JSON formatter and the rate-limited log shared by bus, RPC, registration."""

from __future__ import annotations

import json
import logging
import time

import pytest

from procmond.logs import JsonFormatter, RateLimitedLog


def test_rate_limited_log_holds_back_and_counts_per_key(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line per key per interval; the next line says how many were held back;
    keys are independent; reset() lets the next one through at once."""
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    logger = logging.getLogger("procmond.test-rate")
    limited = RateLimitedLog(logger, interval=10.0)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(5):
            limited(logging.WARNING, "a", "publish failed: %s", "down")
        limited(logging.WARNING, "b", "other topic")
        clock[0] += 10.0
        limited(logging.WARNING, "a", "publish failed: %s", "still down")
        limited(logging.WARNING, "a", "held back")
        limited.reset("a")
        limited(logging.WARNING, "a", "new episode")
    assert [r.getMessage() for r in caplog.records] == [
        "publish failed: down",
        "other topic",
        "publish failed: still down (4 similar suppressed)",
        "new episode (1 similar suppressed)",
    ]


def test_json_formatter_writes_one_object_per_record() -> None:
    record = logging.LogRecord("procmond.x", logging.ERROR, __file__, 1, "a %s", ("b",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "error"
    assert entry["logger"] == "procmond.x"
    assert entry["message"] == "a b"
    assert entry["ts"].endswith("Z")
