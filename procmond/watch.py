"""``procmond watch``: tail the control topics and the event streams, one line per message.

Event lines name the source of each event (protocol section 9: ``kernel`` or
``cycle``), mark the ``partial`` ones (the process was gone before its details
could be read) and give a kernel ``stop``'s exit code and signal; heartbeat
lines give the collector's ``capture_mode``. ``--json`` prints the messages and
entries as they are, one JSON object per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from procmond.bus.types import Bus, BusUnavailable
from procmond.text_safety import escape
from procmond.topics import EVENT_STREAMS

#: How long one XREAD blocks; bounds how fast watch notices Ctrl-C or a closed bus.
_XREAD_BLOCK_MS: Final = 1000


def _clock() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def describe_control(channel: str, data: bytes) -> str:
    """One readable line for a control-topic message, its foreign text escaped.

    Everything in it came from the wire: a newline or an escape sequence in an
    id, a reason or an error message is shown as ``\\x0a`` / ``\\x1b``
    (:func:`procmond.text_safety.escape`), never acted on by the terminal.
    """
    return escape(_describe_control(channel, data))


def _describe_control(channel: str, data: bytes) -> str:
    try:
        m = json.loads(data)
    except ValueError:
        return f"{channel}  (not JSON, {len(data)} bytes)"
    if not isinstance(m, dict):
        return f"{channel}  {_short(m)}"
    if channel.startswith("control.health.heartbeat."):
        metrics = m.get("metrics") or {}
        reasons = "; ".join(m.get("reasons") or [])
        return (
            f"{channel}  heartbeat #{m.get('sequence')} {m.get('state')} "
            f"{m.get('health_status')}{' (' + reasons + ')' if reasons else ''} "
            f"procs={metrics.get('processes_collected')} events={metrics.get('events_published')} "
            f"buffer={metrics.get('buffer_level_percent')}% bus={metrics.get('connection_status')}"
            f"{_capture(metrics)}"
        )
    if channel.startswith("control.health.status."):
        return f"{channel}  {m.get('collector_id')} is {m.get('state')} (boot {m.get('boot_id')})"
    if "operation" in m and "status" not in m:
        return (
            f"{channel}  request {m.get('operation')} from {m.get('client_id')} "
            f"id={m.get('request_id')} payload={_short(m.get('payload'))}"
        )
    if "status" in m and "request_id" in m:
        error = m.get("error") or {}
        outcome = f"{m.get('status')}" + (f" {error.get('code')}" if error else "")
        return (
            f"{channel}  response {m.get('operation')} {outcome} from {m.get('service_id')} "
            f"id={m.get('request_id')} in {m.get('total_time_ms')} ms"
        )
    return f"{channel}  {_short(m, 120)}"


def _capture(metrics: dict[str, Any]) -> str:
    """A heartbeat's capture mode (protocol section 9), and kernel losses when there are any."""
    mode = metrics.get("capture_mode")
    if mode is None:  # a version 1 collector
        return ""
    lost = metrics.get("kernel_events_lost")
    return f" capture={mode}" + (f" kernel_lost={lost}" if lost else "")


def _exit(event: dict[str, Any]) -> str:
    """A kernel stop's exit status: ``exit=0``, or ``exit=143 signal=SIGTERM`` (null: none)."""
    code, number = event.get("exit_code"), event.get("exit_signal")
    if code is None:
        return ""
    if not number:
        return f" exit={code}"
    try:
        name = signal.Signals(number).name
    except (ValueError, TypeError):
        name = str(number)
    return f" exit={code} signal={name}"


def describe_event(stream: str, entry_id: str, fields: dict[str, str]) -> str:
    """One readable line for a stream entry.

    ``events.process.exec  seq=892 x pid=10301 ppid=10299 true user=root
    source=kernel cmd=/bin/true marker``: after the user, the source (``kernel``
    or ``cycle``; absent from a version 1 collector), ``partial`` when the
    process was gone before it could be read (its unknown fields show as
    ``?``), and ``exit=``/``signal=`` on a kernel stop. Command lines hold
    whatever their programs were given: controls and bidi overrides in them are
    escaped (:func:`procmond.text_safety.escape`).
    """
    return escape(_describe_event(stream, fields))


def _describe_event(stream: str, fields: dict[str, str]) -> str:
    try:
        event = json.loads(fields.get("event", "{}"))
    except ValueError:
        event = {}
    if not isinstance(event, dict):
        event = {}
    kind = stream.rsplit(".", 1)[-1]
    name = event.get("name") or "?"
    cmd = " ".join(event.get("cmdline") or []) or name
    extra = f" source={event['source']}" if event.get("source") else ""
    if event.get("partial"):
        extra += " partial"
    if event.get("baseline"):
        extra += " baseline"
    if kind == "modify" and event.get("changed"):
        extra += f" changed={','.join(event['changed'])}"
    if kind == "stop":
        extra += _exit(event)
    return (
        f"{stream}  seq={fields.get('seq')} {fields.get('collector_id')} pid={event.get('pid')} "
        f"ppid={event.get('ppid')} {name} user={event.get('username') or '?'}{extra} "
        f"cmd={_short(cmd)}"
    )


def in_seq_order(
    batch: list[tuple[str, str, dict[str, str]]],
) -> list[tuple[str, str, dict[str, str]]]:
    """One XREAD's entries per collector in ``seq`` order, not stream by stream.

    XREAD answers stream by stream, so a process's ``exec`` would be shown after its
    ``stop`` when both came in one read; ``seq`` is one sequence per collector across
    the four streams (protocol section 8), the order the events were made in.
    """

    def key(entry: tuple[str, str, dict[str, str]]) -> tuple[str, int]:
        fields = entry[2]
        seq = fields.get("seq", "")
        return fields.get("collector_id", ""), int(seq) if seq.isdigit() else -1

    return sorted(batch, key=key)


async def watch(
    bus: Bus,
    pattern: str,
    *,
    events: bool,
    json_output: bool,
    emit: Callable[[str], None],
    stop: asyncio.Event,
) -> None:
    """Print control messages matching ``pattern`` and new stream entries until ``stop``."""

    def on_control(_pattern: str, channel: str, data: bytes) -> None:
        if json_output:
            try:
                message: Any = json.loads(data)
            except ValueError:
                message = data.decode(errors="replace")
            emit(json.dumps({"topic": channel, "received": _clock(), "message": message}))
        else:
            emit(f"{_clock()} {describe_control(channel, data)}")

    await bus.psubscribe(pattern, on_control)
    tail = asyncio.create_task(_tail(bus, json_output, emit)) if events else None
    try:
        await stop.wait()
    finally:
        if tail is not None:
            tail.cancel()
            await asyncio.gather(tail, return_exceptions=True)


async def _tail(bus: Bus, json_output: bool, emit: Callable[[str], None]) -> None:
    # Start after each stream's newest entry (resolved once, so nothing that
    # arrives between two XREADs is missed, as it would be with "$").
    last: dict[str, str] = {}
    while not last:
        try:
            last = {key: await bus.stream_tail_id(key) for key in EVENT_STREAMS}
        except BusUnavailable:
            await bus.wait_connected(timeout=1.0)
    while True:
        try:
            batch = await bus.xread(last, block_ms=_XREAD_BLOCK_MS, count=500)
        except BusUnavailable:
            await bus.wait_connected(timeout=1.0)
            continue
        for stream, entry_id, _fields in batch:
            last[stream] = entry_id  # XREAD's order: each stream's newest comes last
        for stream, entry_id, fields in in_seq_order(batch):
            if json_output:
                record: dict[str, Any] = {"topic": stream, "id": entry_id, **fields}
                with contextlib.suppress(ValueError):
                    record["event"] = json.loads(fields.get("event", "null"))
                emit(json.dumps(record))
            else:
                emit(f"{_clock()} {describe_event(stream, entry_id, fields)}")
