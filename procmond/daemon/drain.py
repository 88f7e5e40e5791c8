"""The drain of protocol section 6: finish the cycle, flush events, sync the log.

:func:`drain` is what the lifecycle's ``start drain`` action runs: bounded
by GracefulShutdown's timeout, it waits for the cycle in progress, flushes
the event buffer to the streams (and events the log had refused, once
flushing freed room), syncs the write-ahead log, and returns the
:class:`~procmond.daemon.messages.DrainReport` the answer, the Deregister
request and the exit line are made from.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from procmond.daemon.mailbox import Envelope
from procmond.daemon.messages import DrainReport, Outcome
from procmond.schemas import ShutdownResult
from procmond.store.pipeline import EventPipeline
from procmond.store.wal import WalError

__all__ = ["answer_drained", "drain"]

log = logging.getLogger("procmond.actor")


async def drain(
    pipeline: EventPipeline,
    cycle_boundary: Callable[[], Awaitable[None]],
    reason: str,
    timeout_s: float,
    *,
    mailbox_note: str = "",
) -> DrainReport:
    """Drain within ``timeout_s``; ``complete`` is False when the time ran out."""
    started = time.monotonic()
    deadline = started + timeout_s
    published_before = pipeline.events_published
    complete = True
    try:
        async with asyncio.timeout(timeout_s):
            await cycle_boundary()
    except TimeoutError:
        complete = False
    complete = await pipeline.flush(max(0.0, deadline - time.monotonic())) and complete
    while pipeline.unlogged and complete:
        # Held events (the log was full): flushing freed room; log and flush them.
        if not await pipeline.retry_unlogged():
            break
        complete = await pipeline.flush(max(0.0, deadline - time.monotonic()))
    if pipeline.unlogged:
        complete = False
        log.error(
            "%d events could not be written to the log before exit and are lost: %s",
            pipeline.unlogged,
            pipeline.log_error,
        )
    try:
        await pipeline.sync()
    except WalError as exc:
        log.error("could not sync the write-ahead log during drain: %s", exc)
    result = ShutdownResult(
        events_flushed=pipeline.events_published - published_before,
        wal_pending=pipeline.pending,
        drain_ms=round((time.monotonic() - started) * 1000, 3),
        complete=complete,
    )
    log.info(
        "drain %s in %.0f ms: %d events flushed, %d left in the log%s",
        "complete" if complete else "timed out",
        result.drain_ms,
        result.events_flushed,
        result.wal_pending,
        mailbox_note,
    )
    return DrainReport(reason, result, pipeline.unlogged)


def answer_drained(envelope: Envelope, report: DrainReport) -> None:
    """Answer the GracefulShutdown that asked for the drain (protocol section 6)."""
    if envelope.future.done():
        return
    envelope.future.set_result(
        Outcome(
            payload=report.result.model_dump(mode="json"),
            queue_ms=(envelope.started_at - envelope.enqueued_at) * 1000,
            execution_ms=(time.monotonic() - envelope.started_at) * 1000,
        )
    )
