"""What ``procmond agent`` prints: JSON lines, or a live table on a terminal.

Both views take the tracker's events as they happen (:meth:`events`) and run
a loop until the stop event (:meth:`run`). :class:`JsonLines` writes one
object per notable change: ``{"timestamp", "event", "collector_id", ...}``
(``capture_mode`` events carry ``capture_mode`` and ``previous``).
:class:`LiveTable` redraws at most ``REDRAW_S`` apart, worst collectors first,
with the latest few events underneath; its CAPTURE column is each collector's
``capture_mode`` from its last heartbeat (``kernel`` or ``cycle``, protocol
section 9; ``-`` before the first heartbeat or from a version 1 collector).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import shutil
import time
from typing import Any, Final, Protocol, TextIO

from procmond.agent.tracker import AgentEvent, CollectorRecord, Tracker
from procmond.bus.types import Bus
from procmond.schemas import now_timestamp
from procmond.text_safety import escape


class Agent(Protocol):
    """What a view reads of the running agent (:class:`procmond.agent.service.Agent`)."""

    tracker: Tracker
    bus: Bus
    service_id: str


__all__ = ["REDRAW_S", "JsonLines", "LiveTable", "event_line", "table_lines"]

#: Twice a second: ages stay readable, a 1,000-row table costs ~1 % CPU.
REDRAW_S: Final = 0.5
#: Latest events shown under the table.
RECENT_EVENTS: Final = 5
_SEVERITY: Final = {"failed": 0, "suspect": 1, "late": 2}
_COLUMNS: Final = (
    "ID", "STATE", "HEALTH", "CAPTURE", "LAST BEAT", "SEQ", "LOST", "EVENTS", "BUFFER %",
)  # fmt: skip


def event_line(event: AgentEvent, timestamp: str | None = None) -> str:
    """One event as a JSON line (without the newline)."""
    document: dict[str, Any] = {
        "timestamp": timestamp or now_timestamp(),
        "event": event.kind.value,
        "collector_id": event.collector_id,
    }
    document.update(event.data)
    return json.dumps(document, separators=(",", ":"), default=str)


class JsonLines:
    """One JSON object per line per event; flushed at once (a pipe may be watching)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def events(self, events: list[AgentEvent]) -> None:
        """Write the events."""
        stamp = now_timestamp()
        self._stream.write("".join(event_line(e, stamp) + "\n" for e in events))
        self._stream.flush()

    async def run(self, agent: Agent, stop: asyncio.Event) -> None:
        """Nothing to redraw: wait for the end."""
        await stop.wait()

    def close(self) -> None:
        """Flush what is left."""
        with contextlib.suppress(ValueError, OSError):
            self._stream.flush()


def _cell(value: object) -> str:
    return "-" if value is None else escape(value)


def _row(record: CollectorRecord, now: float) -> tuple[str, ...]:
    age = f"{now - record.last_beat:.1f}s" if record.last_beat is not None else "-"
    metrics = record.metrics
    buffer = metrics.get("buffer_level_percent")
    return (
        escape(record.collector_id),
        escape(record.state),
        _cell(record.health),
        _cell(record.capture_mode),
        age,
        str(record.sequence),
        str(record.lost),
        _cell(metrics.get("events_published")),
        f"{buffer:.0f}" if isinstance(buffer, int | float) else "-",
    )


def table_lines(
    collectors: list[CollectorRecord], now: float, *, height: int, header: str
) -> list[str]:
    """The table as lines: header, column titles, the worst ``height - 3`` rows first."""
    ordered = sorted(collectors, key=lambda r: (_SEVERITY.get(r.state, 3), r.collector_id))
    room = max(height - 3, 1)
    shown = ordered[:room] if len(ordered) <= room else ordered[: room - 1]
    rows = [_COLUMNS, *(_row(r, now) for r in shown)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [header]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    if len(shown) < len(ordered):
        lines.append(f"... {len(ordered) - len(shown)} more")
    return lines


class LiveTable:
    """A table redrawn in place on a terminal."""

    def __init__(self, stream: TextIO, clock: Any = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._recent: collections.deque[str] = collections.deque(maxlen=RECENT_EVENTS)

    def events(self, events: list[AgentEvent]) -> None:
        """Remember the latest events for the footer."""
        stamp = now_timestamp()[11:19]
        for event in events:
            details = " ".join(f"{k}={v}" for k, v in event.data.items())
            who = event.collector_id or "*"
            # The details hold what collectors and peers sent (a rejection's
            # message, ids): escaped before they reach the terminal.
            self._recent.append(escape(f"{stamp} {event.kind.value:<15} {who} {details}"))

    def render(self, agent: Agent) -> str:
        """The whole screen as text."""
        tracker = agent.tracker
        size = shutil.get_terminal_size((100, 30))
        counts = collections.Counter(r.state for r in tracker.collectors.values())
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none yet"
        bus = "BUS SUSPECT" if tracker.bus_suspect else agent.bus.status.value
        header = (
            f"procmond agent {agent.service_id}: {len(tracker.collectors)} collectors "
            f"({summary}); bus {bus}; heartbeats {tracker.heartbeats_total}"
        )
        lines = table_lines(
            list(tracker.collectors.values()),
            self._clock(),
            height=size.lines - len(self._recent) - 1,
            header=header,
        )
        lines += ["", *self._recent]
        return "\n".join(line[: size.columns] for line in lines)

    async def run(self, agent: Agent, stop: asyncio.Event) -> None:
        """Redraw every ``REDRAW_S`` until stopped."""
        self._stream.write("\x1b[?25l")  # hide the cursor while redrawing
        while not stop.is_set():
            self._stream.write("\x1b[H\x1b[2J" + self.render(agent) + "\n")
            self._stream.flush()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REDRAW_S):
                    await stop.wait()

    def close(self) -> None:
        """Show the cursor again."""
        with contextlib.suppress(ValueError, OSError):
            self._stream.write("\x1b[?25h")
            self._stream.flush()
