"""Durable event pipeline: write-ahead log first, then Redis Streams.

An event's life (protocol section 8):

1. the collection cycle hands a batch to :meth:`EventPipeline.submit`, which
   numbers the events (``seq`` continues the log's sequence), appends them
   to the write-ahead log and fsyncs it, all on the log's own thread;
2. the batch joins the in-memory buffer, and the flusher task sends the
   buffer's head to Redis in pipelined XADDs of at most
   ``max_events_in_flight`` entries;
3. only when Redis acknowledged a batch is it dropped from the buffer and
   acknowledged in the log (``ack_through``), so a crash at any point
   replays it: at least once, never lost.

While Redis is down the buffer fills; its level is ``buffer_level_percent``
and the collector slows down (backpressure) and finally pauses, so memory
stays bounded while nothing accepted is dropped.

When the log cannot take a batch (its size cap is reached, or the disk
fails a write), the events that fit are logged and the rest are *held*, in
order and without a seq, in :attr:`EventPipeline.unlogged`. They were
observed once and the collector's view has moved past them, so dropping them
would lose them without a trace (no seq gap). The actor collects nothing new
while events are held; it calls :meth:`EventPipeline.retry_unlogged` first,
and once Redis acknowledges events the log frees room and the held events
get the next seqs. Memory stays bounded by one cycle's events.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from procmond.bus.redis import Bus, BusError, BusRefused, ConnectionStatus
from procmond.collect.process_event import ProcessEvent
from procmond.store.wal import WalError, WalFullError, WalRecord, WriteAheadLog
from procmond.topics import EVENT_KINDS, stream_key

log = logging.getLogger("procmond.pipeline")

#: Events the buffer holds before collection pauses. At ~400 bytes an event
#: this is ~4 MB: bounded, and enough for minutes of churn while Redis is away.
DEFAULT_BUFFER_CAPACITY: Final = 10_000
#: Approximate cap of each stream (XADD MAXLEN ~): consumers keep up long before.
DEFAULT_STREAM_MAXLEN: Final = 100_000
#: Retry pacing while Redis is unreachable; the bus reconnects on its own.
_RETRY_INITIAL_S: Final = 0.05
_RETRY_MAX_S: Final = 1.0
#: Events per append when logging a cycle: a batch that does not fit whole is
#: retried one event at a time, so as much as fits is logged, in order.
_APPEND_CHUNK: Final = 256


@dataclass(frozen=True)
class _Entry:
    seq: int
    stream: str
    #: The XADD fields; ``event`` stays the log's bytes (redis-py sends bytes as is).
    fields: dict[str, str | bytes]


_STREAM_KEYS: Final = {kind: stream_key(kind) for kind in EVENT_KINDS}
#: One encoder for every event: ``json.dumps(..., separators=...)`` builds a new
#: JSONEncoder per call (docs/performance.md, profile findings).
_dumps: Final = json.JSONEncoder(separators=(",", ":")).encode


def _event_json(collector_id: str, seq: int, event: ProcessEvent) -> bytes:
    body = event.to_wire()
    body["seq"] = seq
    body["collector_id"] = collector_id
    return _dumps(body).encode()


def _payload(stream: str, boot_id: bytes, event_json: bytes) -> bytes:
    """The log payload of one event: stream key, boot id and event JSON, one per line."""
    return b"\n".join((stream.encode(), boot_id, event_json))


def _encode(collector_id: str, boot_id: str, seq: int, event: ProcessEvent) -> bytes:
    """The log payload of ``event`` numbered ``seq`` (what :meth:`EventPipeline._append` logs)."""
    stream = _STREAM_KEYS[event.event_type]
    return _payload(stream, boot_id.encode(), _event_json(collector_id, seq, event))


def _decode(collector_id: str, record: WalRecord) -> _Entry:
    """The XADD entry of a logged event (replay after a restart)."""
    stream, boot_id, event = record.payload.split(b"\n", 2)
    fields: dict[str, str | bytes] = {
        "collector_id": collector_id,
        "boot_id": boot_id.decode(),
        "seq": str(record.seq),
        "event": event,
    }
    return _Entry(record.seq, stream.decode(), fields)


class EventPipeline:
    """Owns the write-ahead log's writes, the in-memory buffer and the flusher."""

    def __init__(
        self,
        wal: WriteAheadLog,
        bus: Bus,
        *,
        collector_id: str,
        boot_id: str,
        batch_size: int = 1000,
        capacity: int = DEFAULT_BUFFER_CAPACITY,
        stream_maxlen: int | None = DEFAULT_STREAM_MAXLEN,
    ) -> None:
        self._wal = wal
        self._bus = bus
        self._collector_id = collector_id
        self._boot_id = boot_id
        self._batch_size = batch_size
        self._capacity = capacity
        self._maxlen = stream_maxlen
        self._buffer: collections.deque[_Entry] = collections.deque()
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        # The log is not thread-safe: one thread does all its work, in order.
        self._wal_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="procmond-wal")
        self.events_published = 0
        self.events_logged = 0
        self.publish_failures = 0
        self._unlogged: collections.deque[ProcessEvent] = collections.deque()
        self.log_error: str | None = None

    # -- state ------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events logged but not yet acknowledged by Redis."""
        return len(self._buffer)

    @property
    def unlogged(self) -> int:
        """Events observed but held back because the log had no room or failed."""
        return len(self._unlogged)

    @property
    def capacity(self) -> int:
        """Buffer size at which collection pauses."""
        return self._capacity

    @property
    def level_percent(self) -> float:
        """``buffer_level_percent`` of the protocol."""
        return round(100.0 * len(self._buffer) / self._capacity, 2)

    @property
    def wal(self) -> WriteAheadLog:
        """The log (read-only use: sizes and counters)."""
        return self._wal

    def set_batch_size(self, batch_size: int) -> None:
        """``max_events_in_flight``: entries per pipelined XADD."""
        self._batch_size = batch_size

    # -- intake -----------------------------------------------------------

    def restore(self, records: Sequence[WalRecord]) -> None:
        """Queue records replayed from the log at start-up (they keep their seq)."""
        for record in records:
            self._buffer.append(_decode(self._collector_id, record))
        self._signal()

    async def submit(self, events: Sequence[ProcessEvent]) -> int:
        """Log ``events`` durably, then queue them for Redis; returns how many were logged.

        Events are logged in order, as many as the log takes; the rest are
        held (:attr:`unlogged`, :attr:`log_error` says why) and logged by
        :meth:`retry_unlogged`. Events already held go first, so seq follows
        the order of observation.
        """
        self._unlogged.extend(events)
        return await self.retry_unlogged()

    async def retry_unlogged(self) -> int:
        """Log as many held events as the log takes now; returns how many."""
        if not self._unlogged:
            return 0
        loop = asyncio.get_running_loop()
        entries, error = await loop.run_in_executor(self._wal_thread, self._log_held)
        self._buffer.extend(entries)
        self.events_logged += len(entries)
        if error is not None:
            if self.log_error is None:
                log.error(
                    "write-ahead log refused events: %s; %d events held, collection paused",
                    error,
                    len(self._unlogged),
                )
            self.log_error = error
        elif self.log_error is not None:
            log.warning("write-ahead log writable again: held events logged, collection resumes")
            self.log_error = None
        self._signal()
        return len(entries)

    def _log_held(self) -> tuple[list[_Entry], str | None]:
        """On the log's thread: append the held events' head while it fits, then fsync."""
        entries: list[_Entry] = []
        error: str | None = None
        chunk = _APPEND_CHUNK
        try:
            while self._unlogged:
                batch = [self._unlogged[i] for i in range(min(chunk, len(self._unlogged)))]
                try:
                    entries.extend(self._append(batch))
                except WalFullError as exc:
                    if chunk > 1:
                        chunk = 1  # log what still fits, one event at a time
                        continue
                    error = str(exc)
                    break
                for _ in batch:
                    self._unlogged.popleft()
        except (WalError, OSError) as exc:
            error = str(exc) or type(exc).__name__
        if entries:
            try:
                self._wal.sync()
            except WalError as exc:
                # Written (the kernel has them, a process crash keeps them) but not
                # known to be on disk: queue them anyway and report the failure.
                error = str(exc)
        return entries, error

    def _append(self, events: Sequence[ProcessEvent]) -> list[_Entry]:
        """Number, encode and log ``events``; their XADD entries, built from the same bytes."""
        cid = self._collector_id
        boot_id = self._boot_id
        boot = boot_id.encode()
        first = self._wal.next_seq
        streams = [_STREAM_KEYS[event.event_type] for event in events]
        bodies = [_event_json(cid, first + i, event) for i, event in enumerate(events)]
        records = self._wal.append(
            [_payload(stream, boot, body) for stream, body in zip(streams, bodies, strict=True)]
        )
        if records and records[0].seq != first:  # pragma: no cover - the log is single-owner
            raise RuntimeError(f"write-ahead log numbered from {records[0].seq}, expected {first}")
        return [
            _Entry(
                record.seq,
                stream,
                {"collector_id": cid, "boot_id": boot_id, "seq": str(record.seq), "event": body},
            )
            for record, stream, body in zip(records, streams, bodies, strict=True)
        ]

    def _signal(self) -> None:
        if self._buffer:
            self._empty.clear()
            self._wake.set()
        else:
            self._empty.set()

    # -- output -----------------------------------------------------------

    async def run(self) -> None:
        """The flusher: send the buffer to Redis for as long as the daemon runs."""
        delay = _RETRY_INITIAL_S
        while True:
            if not self._buffer:
                self._wake.clear()
                self._empty.set()
                await self._wake.wait()
                continue
            if self._bus.status is not ConnectionStatus.CONNECTED:
                await self._bus.wait_connected(timeout=_RETRY_MAX_S)
                continue
            if await self._send_head():
                delay = _RETRY_INITIAL_S
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    async def _send_head(self) -> bool:
        batch = [self._buffer[i] for i in range(min(self._batch_size, len(self._buffer)))]
        try:
            await self._bus.xadd_many(
                [(entry.stream, entry.fields) for entry in batch], maxlen=self._maxlen
            )
        except BusError as exc:
            # Unavailable (server down) or refused (WRONGTYPE, OOM, NOPERM): either
            # way the events stay logged and buffered and are retried; a refusal
            # must not end the flusher, or nothing would ever be published again.
            self.publish_failures += 1
            level = logging.WARNING if isinstance(exc, BusRefused) else logging.DEBUG
            if level == logging.DEBUG or self.publish_failures % 100 == 1:
                log.log(level, "XADD of %d events failed, will retry: %s", len(batch), exc)
            return False
        last = batch[-1].seq
        await asyncio.get_running_loop().run_in_executor(
            self._wal_thread, self._wal.ack_through, last
        )
        for _ in batch:
            self._buffer.popleft()
        self.events_published += len(batch)
        self._signal()
        return True

    async def flush(self, timeout: float) -> bool:
        """Wait until every buffered event is acknowledged; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        except TimeoutError:
            return False
        return True

    async def sync(self) -> None:
        """fsync the log (acknowledgements included); :class:`WalError` if that fails."""
        await asyncio.get_running_loop().run_in_executor(self._wal_thread, self._wal.sync)

    async def close(self) -> None:
        """Sync and close the log, then stop its thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._wal_thread, self._close_wal)
        self._wal_thread.shutdown(wait=True)

    def _close_wal(self) -> None:
        try:
            self._wal.close()  # syncs first; releases the files and the lock either way
        except WalError as exc:
            log.error("write-ahead log not synced at exit: %s", exc)
