"""Events on the wire: to_wire and its RFC 3339 times (protocol section 8), and
command lines bounded in size after redaction."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime

from collector_support import BLOCK_ON_STDIN, SECRET, child, end, only_event
from hypothesis import given
from hypothesis import strategies as st

from procmond.collect.collector import MAX_CMDLINE_BYTES, ProcessCollector, bounded_cmdline
from procmond.collect.process_event import ProcessEvent, rfc3339

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_to_wire_matches_protocol_section_8() -> None:
    """to_wire gives RFC 3339 'Z' times, JSON types, baseline only when true, no seq/collector."""
    result = ProcessCollector().collect()
    event = only_event(result, os.getpid(), "start")
    wire = event.to_wire()
    assert json.loads(json.dumps(wire)) == wire
    required = {"event_type", "pid", "ppid", "name", "exe", "cmdline", "username"}
    assert required | {"start_time", "status", "observed_at"} <= wire.keys()
    assert "seq" not in wire
    assert "collector_id" not in wire
    assert wire["baseline"] is True
    assert "changed" not in wire
    assert isinstance(wire["start_time"], str)
    assert RFC3339_Z.match(wire["start_time"])
    assert isinstance(wire["observed_at"], str)
    assert RFC3339_Z.match(wire["observed_at"])
    plain = ProcessEvent(
        event_type="modify",
        pid=1,
        ppid=0,
        name="x",
        exe=None,
        cmdline=(),
        username=None,
        start_time=0.0,
        status="zombie",
        observed_at=1.5,
        changed=("status",),
    ).to_wire()
    assert plain["start_time"] == "1970-01-01T00:00:00.000000Z"
    assert plain["observed_at"] == "1970-01-01T00:00:01.500000Z"
    assert plain["exe"] is None
    assert plain["username"] is None
    assert plain["changed"] == ["status"]
    assert not {"baseline", "cpu_percent", "memory_rss", "exe_sha256"} & plain.keys()


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False))
def test_rfc3339_matches_datetime_formatting(epoch: float) -> None:
    """The cached-second formatter spells every instant exactly as datetime does."""
    expected = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert rfc3339(epoch) == expected


def _wire_bytes(args: tuple[str, ...] | list[str]) -> int:
    return sum(len(a.encode("utf-8", "surrogateescape")) + 1 for a in args)


@given(st.lists(st.text(max_size=40), max_size=30), st.integers(min_value=2, max_value=400))
def test_bounded_cmdline_keeps_a_prefix_within_the_limit(args: list[str], limit: int) -> None:
    """Short enough: unchanged. Too long: a prefix of the arguments (the last one maybe
    cut) within the limit, then one marker counting exactly the bytes left out."""
    out = bounded_cmdline(args, limit)
    if _wire_bytes(args) <= limit:
        assert out == tuple(args)
        return
    *kept, marker = out
    assert _wire_bytes(kept) <= limit
    left_out = int(re.fullmatch(r"\[(\d+) bytes truncated\]", marker).group(1))  # type: ignore[union-attr]
    assert left_out == _wire_bytes(args) - _wire_bytes(kept)
    for index, arg in enumerate(kept):
        if index < len(kept) - 1:
            assert arg == args[index]
        else:
            assert args[index].startswith(arg)


def test_huge_command_line_is_cut_after_redaction() -> None:
    """A real child with ~1 MiB of arguments (more than the smallest write-ahead log
    holds) is reported with a command line of at most MAX_CMDLINE_BYTES plus the
    marker; a secret at the cut is still redacted."""
    collector = ProcessCollector()
    collector.collect()
    filler = ["y" * 100_000] * 10
    edge = MAX_CMDLINE_BYTES - 2_000
    args = ("a" * edge, "--password", SECRET, *filler)
    with child(BLOCK_ON_STDIN, *args) as proc:
        event = only_event(collector.collect(), proc.pid, "start")
        end(proc)
    assert SECRET not in json.dumps(event.to_wire())
    assert event.cmdline is not None
    assert "[REDACTED]" in event.cmdline
    assert _wire_bytes(event.cmdline[:-1]) <= MAX_CMDLINE_BYTES
    assert re.fullmatch(r"\[\d+ bytes truncated\]", event.cmdline[-1])
    assert len(json.dumps(event.to_wire())) < MAX_CMDLINE_BYTES + 4096
