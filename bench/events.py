"""Synthetic process events, their wire form and the raw XADD baseline (shared by benchmarks).

The wire form comes from the pipeline's own encoder and decoder
(``procmond.pipeline._encode`` / ``_decode``, private but the one source of
the format): what the write-ahead log holds and what the flusher XADDs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio import Redis

from procmond.collect.process_event import EventType, ProcessEvent
from procmond.store.pipeline import DEFAULT_STREAM_MAXLEN
from procmond.store.pipeline import _decode as decode_record
from procmond.store.pipeline import _encode as encode_event
from procmond.store.wal import WalRecord

STREAMS: Final = ("events.process.start", "events.process.stop", "events.process.modify")
_TYPES: Final[tuple[EventType, ...]] = ("start", "start", "stop", "modify")

__all__ = [
    "STREAMS",
    "delete_streams",
    "encode_event",
    "raw_xadd_seconds",
    "stream_lengths",
    "synthetic_events",
    "wire_entries",
]


def synthetic_events(count: int) -> list[ProcessEvent]:
    """Plausible events (~380 bytes of JSON each), starts, stops and modifies mixed."""
    now = time.time()
    events = []
    for i in range(count):
        kind = _TYPES[i % len(_TYPES)]
        events.append(
            ProcessEvent(
                event_type=kind,
                pid=10_000 + i,
                ppid=1 + i % 50,
                name="python3",
                exe="/usr/bin/python3.11",
                cmdline=("python3", "-m", "worker", "--queue", f"jobs-{i % 17}", "--verbose"),
                username="svc-worker",
                start_time=now - 3600 + i * 0.001,
                status="sleeping",
                observed_at=now,
                cpu_percent=1.5,
                memory_rss=48_000_000 + i,
                changed=("status",) if kind == "modify" else (),
            )
        )
    return events


def wire_entries(
    collector_id: str, events: Sequence[ProcessEvent]
) -> list[tuple[str, dict[str, str | bytes]]]:
    """Exactly what the pipeline XADDs for these events: (stream, fields)."""
    boot_id = uuid.uuid4().hex
    out = []
    for seq, event in enumerate(events, start=1):
        record = WalRecord(seq, encode_event(collector_id, boot_id, seq, event))
        entry = decode_record(collector_id, record)
        out.append((entry.stream, entry.fields))
    return out


async def delete_streams(url: str) -> None:
    """Remove the three event streams."""
    client = Redis.from_url(url)
    try:
        await client.delete(*STREAMS)
    finally:
        await client.aclose()


async def stream_lengths(url: str) -> dict[str, int]:
    """XLEN of each event stream."""
    client = Redis.from_url(url)
    try:
        return {key: int(await client.xlen(key)) for key in STREAMS}
    finally:
        await client.aclose()


async def raw_xadd_seconds(
    url: str, entries: Sequence[tuple[str, dict[str, str | bytes]]], batch: int
) -> float:
    """Baseline: pipelined XADD (``MAXLEN ~`` as procmond) of ``entries``; elapsed seconds."""
    await delete_streams(url)
    client = Redis.from_url(url)
    try:
        t0 = time.perf_counter()
        for start in range(0, len(entries), batch):
            pipe = client.pipeline(transaction=False)
            for key, fields in entries[start : start + batch]:
                encoded: dict[Any, Any] = fields  # redis-py's field types are invariant
                pipe.xadd(key, encoded, maxlen=DEFAULT_STREAM_MAXLEN, approximate=True)
            await pipe.execute()
        return time.perf_counter() - t0
    finally:
        await client.aclose()
