"""The limits of protocol section 10 (issue 11), part by part: escaping foreign text,
envelope lengths and the deadline span, the answer cache's bounds, the mailbox's
fair share, the assigned heartbeat interval's range, identifiers matched whole.

The same attacks against a real procmond and Redis: tests/test_attacks_limits.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from memory_harness import CID, FAST, make_ready, running_parts, soon

from fsm import State
from procmond.agent.schemas import parse_register
from procmond.agent.tracker import AgentEvent, EventKind
from procmond.agent.view import LiveTable
from procmond.cli import main
from procmond.config import build_settings
from procmond.ctl import summarize
from procmond.daemon.answers import ENTRY_OVERHEAD_BYTES, AnswerCache
from procmond.daemon.mailbox import Mailbox
from procmond.daemon.messages import HealthCheck
from procmond.demo import terminal_emitter
from procmond.errors import Refused, StartupError
from procmond.logs import TEXT_FORMAT, EscapingFormatter
from procmond.protocol import IDENTIFIER, ErrorCode
from procmond.schemas import PayloadError, RequestError, parse_request
from procmond.text_safety import escape
from procmond.watch import describe_control, describe_event

FORGED = "ok\n12:00:00 ERROR   procmond: forged \x1b[2J\x07\x9b\x7f\u202egpj.exe\u2066"
ESCAPED = "ok\\x0a12:00:00 ERROR   procmond: forged \\x1b[2J\\x07\\x9b\\x7f\\u202egpj.exe\\u2066"

BIDI_ESCAPED = "".join(
    f"\\u{c:04x}" for c in (0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069)
)

# -- one escaping function --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (FORGED, ESCAPED),
        ("tab\there\r", "tab\\x09here\\x0d"),
        ("\x00\x1f\x7f\x80\x9f", "\\x00\\x1f\\x7f\\x80\\x9f"),
        ("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069", BIDI_ESCAPED),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("plain é 漢 😀 \u2028? -- a\\b", "plain é 漢 😀 \u2028? -- a\\b"),
    ],
    ids=["forged-line", "tab-cr", "c0-del-c1", "bidi", "surrogate", "printable-kept"],
)
def test_escape_makes_controls_and_bidi_overrides_visible(raw: str, shown: str) -> None:
    """C0, DEL, C1, bidi overrides and isolates, lone surrogates: \\xNN or \\uNNNN."""
    assert escape(raw) == shown
    assert escape(7) == "7"


def test_a_forged_log_message_stays_one_line() -> None:
    """The text log format escapes the message: a newline cannot start a fake log line."""
    formatter = EscapingFormatter(TEXT_FORMAT, "%H:%M:%S")
    record = logging.LogRecord(
        "procmond.registration", logging.WARNING, __file__, 1,
        "registration rejected by the agent: %s", (FORGED,), None,
    )  # fmt: skip
    line = formatter.format(record)
    assert "\n" not in line
    assert line.endswith(f"registration rejected by the agent: {ESCAPED}")


def test_a_traceback_keeps_its_lines() -> None:
    """Only the message is escaped: the daemon's own traceback stays readable."""
    formatter = EscapingFormatter(TEXT_FORMAT, "%H:%M:%S")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "procmond", logging.ERROR, __file__, 1, "failed: %s", ("a\nb",), sys.exc_info()
        )
    text = formatter.format(record)
    assert "failed: a\\x0ab\nTraceback" in text


def test_watch_lines_escape_foreign_text() -> None:
    """watch's request, response and event lines escape ids, messages and command lines."""
    request = {"operation": "Update\x1bConfig", "client_id": "x\ny", "request_id": FORGED}
    line = describe_control("control.collector.c1", json.dumps(request).encode())
    assert "\n" not in line
    assert "\x1b" not in line
    assert ESCAPED in line
    event = {"pid": 1, "ppid": 0, "name": "sh", "cmdline": ["sh", "-c", "echo\u202eok\n"]}
    shown = describe_event("events.process.start", "1-0", {"event": json.dumps(event)})
    assert "sh -c echo\\u202eok\\x0a" in shown


def test_ctl_summary_escapes_the_error_and_its_context() -> None:
    """An error message and context from the wire print escaped; the line breaks are ctl's."""
    response: dict[str, Any] = {
        "operation": "UpdateConfig",
        "status": "Error",
        "error": {
            "code": "VALIDATION_FAILED",
            "message": FORGED,
            "context": {"errors": [{"field": "a\nb", "message": "\x1b[31mred"}]},
        },
    }
    text = summarize(response)
    assert text.splitlines() == [f"Error VALIDATION_FAILED: {ESCAPED}", "  a\\x0ab: \\x1b[31mred"]


def test_demo_and_agent_screens_escape_what_they_print() -> None:
    """The demo's lines and the agent table's recent events are escaped."""
    out = io.StringIO()
    terminal_emitter(out)("procmond", FORGED)
    assert out.getvalue().count("\n") == 1
    assert ESCAPED in out.getvalue()
    table = LiveTable(io.StringIO())
    table.events([AgentEvent(EventKind.REJECTED, "c1", {"message": FORGED})])
    (recent,) = table._recent
    assert ESCAPED in recent


# -- envelope lengths and the deadline span ----------------------------------------------


def _request(**fields: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "request_id": "r1",
        "client_id": "ops",
        "target": f"control.collector.{CID}",
        "operation": "HealthCheck",
        "payload": None,
        "timestamp": now.isoformat(),
        "deadline": (now + timedelta(seconds=10)).isoformat(),
    }
    body.update(fields)
    return body


def test_ids_and_operation_at_most_128_characters() -> None:
    """128 characters pass; 129 are refused, naming the field, its length and the limit."""
    assert parse_request(_request(correlation_id="c" * 128)).correlation_id == "c" * 128
    for field in ("request_id", "correlation_id", "operation"):
        with pytest.raises(RequestError) as caught:
            parse_request(_request(**{field: "x" * 1_000_000}))
        (wrong,) = caught.value.errors
        assert wrong["field"] == field
        assert (wrong["length"], wrong["limit"]) == (1_000_000, 128)
        assert "x" * 129 not in str(caught.value)
        assert len(caught.value.request_id) <= 128
    with pytest.raises(RequestError):
        parse_request(_request(correlation_id=""))


def test_a_deadline_over_300_s_after_the_timestamp_is_refused() -> None:
    """300 s is the longest deadline span; a second more is an error on ``deadline``."""
    now = datetime.now(UTC)
    edge = _request(timestamp=now.isoformat(), deadline=(now + timedelta(seconds=300)).isoformat())
    parse_request(edge)
    with pytest.raises(RequestError) as caught:
        parse_request(_request(deadline=(now + timedelta(seconds=301)).isoformat()))
    (wrong,) = caught.value.errors
    assert (wrong["field"], wrong["limit_s"]) == ("deadline", 300)
    assert caught.value.request_id == "r1"


async def test_a_long_correlation_id_is_answered_invalid_without_echo(tmp_path: Path) -> None:
    """Over the memory bus: INVALID_REQUEST, the request_id echoed, the long value not."""
    async with running_parts(tmp_path) as parts:
        answer = await parts.client.call("HealthCheck", None, correlation_id="z" * 100_000)
        assert answer["error"]["code"] == "INVALID_REQUEST"
        assert answer["correlation_id"] == answer["request_id"]
        assert len(json.dumps(answer)) < 2048
        assert answer["error"]["context"]["errors"][0]["field"] == "correlation_id"


# -- the answer cache ---------------------------------------------------------------------


async def test_answer_cache_is_bounded_in_bytes_oldest_first() -> None:
    """Answers past the byte bound evict the oldest entries; the accounting follows."""
    cache = AnswerCache(max_bytes=10_000, max_entries=1000)
    for n in range(20):
        key = ("c", f"r{n}")
        cache.fill(key, cache.reserve(key, 100.0, 0.0), b"a" * 1000)
    assert cache.bytes <= 10_000
    held = [n for n in range(20) if cache.get(("c", f"r{n}"), 1.0) is not None]
    assert held == list(range(20 - len(held), 20))  # the newest stayed
    assert cache.evicted == 20 - len(held)
    assert cache.bytes == sum(ENTRY_OVERHEAD_BYTES + 1 + len(f"r{n}") + 1000 for n in held)


async def test_answer_cache_is_bounded_in_count_and_expires_at_the_deadline() -> None:
    """At most ``max_entries``; an entry goes at its expiry (capped at 300 s)."""
    cache = AnswerCache(max_bytes=10**9, max_entries=3)
    for n in range(5):
        cache.reserve(("c", str(n)), 10.0 + n, 0.0)
    assert len(cache) == 3
    assert cache.get(("c", "1"), 0.0) is None
    assert cache.get(("c", "2"), 11.9) is not None
    assert cache.get(("c", "2"), 12.0) is None  # its deadline passed
    assert len(cache) == 2
    far = cache.reserve(("c", "far"), 10_000.0, 20.0)
    assert cache.get(("c", "far"), 319.0) is far
    assert cache.get(("c", "far"), 320.0) is None  # 300 s from receipt at most
    assert cache.bytes == 0


async def test_repeat_is_answered_from_the_cache_until_the_deadline(tmp_path: Path) -> None:
    """A repeat gets the first answer; the cache accounts its bytes."""
    async with running_parts(tmp_path) as parts:
        body = parts.client.request("HealthCheck", None, request_id="same")
        first = await parts.client.call_body(body)
        again = await parts.client.call_body(body)
        assert again == first
        assert parts.rpc.answers.bytes > len(json.dumps(first))


# -- the mailbox's fair share -------------------------------------------------------


async def test_one_caller_holds_at_most_a_quarter_of_the_mailbox() -> None:
    """Past its share a caller gets BUSY with retry_after_ms; others are still queued."""
    mailbox = Mailbox(100)
    assert mailbox.share == 25
    for _ in range(25):
        mailbox.put(HealthCheck(caller="flood"), deadline=soon())
    with pytest.raises(Refused) as caught:
        mailbox.put(HealthCheck(caller="flood"), deadline=soon())
    assert caught.value.code is ErrorCode.BUSY
    assert caught.value.context["retry_after_ms"] > 0
    assert (mailbox.share_busy_total, mailbox.busy_total) == (1, 1)  # counted among all BUSY
    for _ in range(25):
        mailbox.put(HealthCheck(caller="operator"), deadline=soon())
    mailbox.put(HealthCheck(), deadline=soon())  # the daemon's own: not anybody's share
    assert (mailbox.held_by("flood"), mailbox.held_by("operator"), len(mailbox)) == (25, 25, 51)


async def test_a_callers_share_is_released_as_its_messages_leave() -> None:
    """Taken, withdrawn and failed messages no longer count in their caller's share."""
    mailbox = Mailbox(8)
    futures = [mailbox.put(HealthCheck(caller="a"), deadline=soon()) for _ in range(2)]
    with pytest.raises(Refused):
        mailbox.put(HealthCheck(caller="a"))
    envelope = await mailbox.get()
    assert envelope is not None
    assert mailbox.held_by("a") == 1
    assert mailbox.withdraw(futures[1])
    assert mailbox.held_by("a") == 0
    mailbox.put(HealthCheck(caller="a"))
    mailbox.fail_all(lambda _e: Refused.shutting_down("draining"))
    assert mailbox.held_by("a") == 0


async def test_a_flooding_client_does_not_starve_another(tmp_path: Path) -> None:
    """Over the memory bus: 200 requests from one client, then one from another: served."""
    async with running_parts(tmp_path) as parts:
        await make_ready(parts)
        flood = [parts.client.request("HealthCheck", None) for _ in range(200)]
        flood = [{**body, "client_id": "flood"} for body in flood]
        for body in flood:
            await parts.client.send(body)
        answer = await parts.client.call("HealthCheck", None)
        assert answer["status"] == "Success", answer
        assert parts.actor.mailbox.high_water <= 25 + 1


# -- the assigned heartbeat interval ------------------------------------------------------


@pytest.mark.parametrize(
    ("assigned", "in_force"),
    [(0, 50), (1, 50), (999, 50), (3_600_001, 50), (1000, 1000), (3_600_000, 3_600_000)],
)
async def test_an_assigned_interval_outside_1000_to_3600000_ms_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, assigned: int, in_force: int
) -> None:
    """The agent's interval wins only within 1,000..3,600,000 ms; else a warning, our own."""
    own = dataclasses.replace(FAST, heartbeat_interval_ms=50)
    async with running_parts(tmp_path, registration=own) as parts:
        parts.agent.interval_ms = assigned
        with caplog.at_level(logging.WARNING, logger="procmond"):
            await make_ready(parts)
        assert parts.actor.state is State.READY
        assert parts.registration.heartbeat_interval_ms == in_force
        warned = [r for r in caplog.records if f"interval of {assigned} ms" in r.getMessage()]
        assert bool(warned) is (in_force != assigned)


# -- identifiers matched whole --------------------------------------------------------------


def test_an_identifier_with_a_trailing_newline_is_refused_everywhere() -> None:
    """``web-01\\n``: not an identifier for the config, ctl, envelopes or the agent."""
    assert IDENTIFIER.fullmatch("web-01")
    assert not IDENTIFIER.fullmatch("web-01\n")
    with pytest.raises(StartupError):
        build_settings({"collector_id": "web-01\n"}, {})
    with pytest.raises(StartupError):
        build_settings({}, {}, {"collector_id": "web-01\n"})
    with pytest.raises(RequestError):
        parse_request(_request(client_id="web-01\n"))
    register = {
        "collector_id": "web-01\n", "collector_type": "process-monitor", "version": "1",
        "capabilities": [], "pid": 1, "hostname": "h", "boot_id": "b",
        "heartbeat_interval_ms": 1000,
    }  # fmt: skip
    with pytest.raises(PayloadError, match="collector_id"):
        parse_register(register)
    result = CliRunner().invoke(main, ["ctl", "health", "--collector", "web-01\n"])
    assert result.exit_code == 2
    assert "does not match" in result.output


async def test_a_request_from_an_id_with_a_newline_is_dropped_and_counted(tmp_path: Path) -> None:
    """Over the memory bus: client_id ``ops\\n`` cannot be answered; it is counted."""
    async with running_parts(tmp_path) as parts:
        body = parts.client.request("HealthCheck", None, client_id="ops\n")
        await parts.client.send(body)
        answer = await parts.client.call("HealthCheck", None)
        assert answer["payload"]["metrics"]["rpc_malformed_total"] == 1
