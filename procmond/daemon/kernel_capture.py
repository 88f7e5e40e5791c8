"""Kernel capture: the netlink process events as one part of collection.

While the lifecycle's ``collect`` activity runs and ``kernel_events`` is on,
:class:`KernelCapture` keeps a kernel source (the reader child,
:mod:`procmond.collect.kernel_process`) and folds what it reports into the
collector's table on the collection thread, the thread the cycles run on, so
the two views never change it at once (:mod:`procmond.collect.kernel_merge`).
Their events go to the pipeline in batches: records gather for
:data:`KERNEL_COALESCE_S`, since each batch costs a log fsync and an XADD
round trip. A loss (the kernel dropped events, or the reader died) is
counted, makes health Degraded for one heartbeat interval, and asks for a
cycle at once to resync; a dead reader is replaced. Where the kernel refuses,
``mode`` says ``cycle`` and ``reason`` why, in one log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, Literal, Protocol

from procmond.collect.kernel import KernelRecord, KernelUnavailable
from procmond.collect.kernel_merge import KernelBatch
from procmond.daemon.messages import CollectTick, Message
from procmond.daemon.readiness import Counter
from procmond.store.pipeline import EventPipeline

__all__ = [
    "KERNEL_COALESCE_S",
    "KERNEL_FLUSH_S",
    "KernelCapture",
    "KernelFactory",
    "KernelFeed",
]

log = logging.getLogger("procmond.actor")

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


class KernelFeed(Protocol):
    """What the capture needs of a kernel source (a KernelProcess in the daemon)."""

    @property
    def running(self) -> bool: ...
    def spawn(self) -> None: ...
    def wait_ready(self) -> None: ...
    def stop(self) -> None: ...
    def lost_since_last(self) -> int: ...


#: Builds the kernel source with the callback its reader thread delivers to.
KernelFactory = Callable[[Callable[[list[KernelRecord]], None]], KernelFeed]
#: How long kernel records may wait to be logged together (issue 10: exec -> Redis
#: p50 <= 20 ms leaves room for it).
KERNEL_COALESCE_S: Final = 0.01
#: How long stopping waits for kernel records already received to be logged.
KERNEL_FLUSH_S: Final = 5.0


class KernelCapture:
    """The kernel source of one collection, its merging and its figures."""

    def __init__(
        self,
        factory: KernelFactory | None,
        enabled: Callable[[], bool],
        apply: Callable[[Sequence[KernelRecord]], KernelBatch],
        thread: ThreadPoolExecutor,
        pipeline: EventPipeline,
    ) -> None:
        """``apply`` folds records into the collector; it runs on ``thread``, the cycles' one."""
        self._factory = factory
        self.enabled = enabled
        self._apply = apply
        self._thread = thread
        self._pipeline = pipeline
        self._source: KernelFeed | None = None
        self._inbox: list[KernelRecord] = []
        self._wake = asyncio.Event()
        self._merger: asyncio.Task[None] | None = None
        self._merging = False
        self._tell: Callable[[Message], bool] | None = None
        #: Protocol section 9: ``kernel`` while the kernel source runs, else ``cycle``.
        self.mode: Literal["kernel", "cycle"] = "cycle"
        self.reason = "not collecting"
        self.received = 0
        self.lost = 0
        self.partial = 0
        #: When the kernel last reported a loss (``time.monotonic``), for health.
        self.last_loss: float | None = None
        #: Kernel batches logged (readiness: "kernel events merged").
        self.batches = Counter()

    async def start(self, spawn: Spawn, tell: Callable[[Message], bool]) -> None:
        """The ``collect`` activity starts: the merger, and the source where it can run."""
        self._tell = tell
        self._merger = spawn(self._merge(), "procmond-kernel-merge")
        await self._start_source()

    async def stop(self) -> None:
        """The activity stops: the source ends, and records received are logged (bounded)."""
        await self._stop_source()
        # The reader's last batches were handed to the loop (call_soon_threadsafe) before
        # stop returned: let those callbacks queue them before looking at the inbox.
        await asyncio.sleep(0)
        merger, self._merger = self._merger, None
        if merger is not None:
            self._wake.set()
            try:
                async with asyncio.timeout(KERNEL_FLUSH_S):
                    while self._inbox or self._merging:
                        await self.batches.next(KERNEL_FLUSH_S)
            except TimeoutError:
                log.warning("kernel events still unlogged when collection stopped")
            merger.cancel()
        self.mode, self.reason = "cycle", "not collecting"

    async def switch(self, on: bool) -> None:
        """``kernel_events`` changed while collecting: start or stop the source."""
        if self._merger is None:
            return
        if on:
            await self._start_source()
        else:
            await self._stop_source()
            self._mode("cycle", "kernel_events turned off by UpdateConfig")

    async def _start_source(self) -> None:
        """Spawn the reader (on the loop's thread: the child's death signal is tied to the
        forking thread) and wait for it to listen off the loop (it takes ~0.4 s)."""
        if self._source is not None:
            return
        if not self.enabled():
            self._mode("cycle", "kernel_events is off in the configuration")
            return
        if self._factory is None:
            self._mode("cycle", "no kernel event source in this build of the daemon")
            return
        loop = asyncio.get_running_loop()

        def deliver(batch: list[KernelRecord]) -> None:  # on the reader thread
            loop.call_soon_threadsafe(self._batch, batch)

        source = self._factory(deliver)
        try:
            source.spawn()
            await asyncio.to_thread(source.wait_ready)
        except KernelUnavailable as exc:
            self._mode("cycle", f"the kernel refused process events: {exc.reason}")
            return
        except OSError as exc:
            self._mode("cycle", f"the kernel reader could not start: {exc}")
            return
        except asyncio.CancelledError:
            source.stop()  # stopped while it started: leave no reader behind
            raise
        self._source = source
        self._mode("kernel", "netlink process connector: every fork, exec and exit")

    def close(self) -> None:
        """Stop the source at once (the daemon is ending; off the loop or not)."""
        source, self._source = self._source, None
        if source is not None:
            source.stop()

    async def _stop_source(self) -> None:
        """Stop the reader without holding the loop (the child takes 60-170 ms to end)."""
        source, self._source = self._source, None
        if source is not None:
            await asyncio.to_thread(source.stop)

    def _mode(self, mode: Literal["kernel", "cycle"], why: str) -> None:
        self.mode, self.reason = mode, why
        log.info("capture mode %s: %s", mode, why)

    def _batch(self, batch: list[KernelRecord]) -> None:
        """On the loop, from the reader thread: queue a batch for the merger."""
        self._inbox.extend(batch)
        self._wake.set()

    async def _merge(self) -> None:
        """Fold queued kernel records into the collector on its thread, log their events."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if not self._inbox:
                self._wake.clear()
                await self._check_alive()
                continue
            # Let a storm's records gather: every batch costs a log fsync and an XADD
            # round trip, ~1 ms, which one record at a time cost more than the exec.
            await asyncio.sleep(KERNEL_COALESCE_S)
            self._wake.clear()
            records, self._inbox = self._inbox, []
            self._merging = True
            try:
                self.received += len(records)
                batch = await loop.run_in_executor(self._thread, self._apply, records)
                self.partial += batch.partial
                await self._pipeline.submit(batch.events)
            finally:
                self._merging = False
                self.batches.add()
            self._check_loss()
            await self._check_alive()

    async def _check_alive(self) -> None:
        """The reader child ended by itself: count the loss, resync, start a new one."""
        source = self._source
        if source is None or source.running:
            return
        self._check_loss()
        log.error("the kernel event reader ended unexpectedly: starting a new one")
        self._source = None
        await asyncio.to_thread(source.stop)
        await self._start_source()

    def _check_loss(self) -> None:
        source = self._source
        lost = source.lost_since_last() if source is not None else 0
        if lost:
            self.lost += lost
            self.last_loss = time.monotonic()
            log.warning("the kernel dropped %d process events: a cycle resyncs now", lost)
            if self._tell is not None:
                self._tell(CollectTick())
