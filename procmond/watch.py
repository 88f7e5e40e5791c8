"""``procmond watch``: tail the control topics and the event streams, one line per message."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from procmond.bus.types import Bus, BusUnavailable
from procmond.topics import EVENT_STREAMS

#: How long one XREAD blocks; bounds how fast watch notices Ctrl-C or a closed bus.
_XREAD_BLOCK_MS: Final = 1000


def _clock() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def describe_control(channel: str, data: bytes) -> str:
    """One readable line for a control-topic message."""
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


def describe_event(stream: str, entry_id: str, fields: dict[str, str]) -> str:
    """One readable line for a stream entry."""
    try:
        event = json.loads(fields.get("event", "{}"))
    except ValueError:
        event = {}
    kind = stream.rsplit(".", 1)[-1]
    cmd = " ".join(event.get("cmdline") or []) or event.get("name", "")
    extra = " baseline" if event.get("baseline") else ""
    if kind == "modify" and event.get("changed"):
        extra += f" changed={','.join(event['changed'])}"
    return (
        f"{stream}  seq={fields.get('seq')} {fields.get('collector_id')} pid={event.get('pid')} "
        f"ppid={event.get('ppid')} {event.get('name')!s} user={event.get('username')}{extra} "
        f"cmd={_short(cmd)}"
    )


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
        for stream, entry_id, fields in batch:
            last[stream] = entry_id
            if json_output:
                record: dict[str, Any] = {"topic": stream, "id": entry_id, **fields}
                with contextlib.suppress(ValueError):
                    record["event"] = json.loads(fields.get("event", "null"))
                emit(json.dumps(record))
            else:
                emit(f"{_clock()} {describe_event(stream, entry_id, fields)}")
