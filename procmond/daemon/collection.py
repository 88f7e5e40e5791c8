"""Collection: kernel events and the cycle, its interval and backpressure, the config.

The actor owns one :class:`Collection`. While the lifecycle's ``collect``
activity runs (:meth:`Collection.start_collecting` to
:meth:`Collection.stop_collecting`), a ticker posts a ``CollectTick`` every
interval (the first at once: the baseline), and, where the kernel lets us and
``kernel_events`` is on, the netlink process connector reports every fork,
exec and exit (:mod:`procmond.collect.kernel`). Kernel records are folded into
the collector's table on the collection thread, the same thread the cycles
run on, so the two views never change it at once
(:mod:`procmond.collect.kernel_merge`), and their events go to the pipeline
in the order they were made. With the kernel source the cycle is the
reconciler: it catches what the kernel stream lost (a loss triggers one at
once); without it, it is the whole collector (``capture_mode`` says which).
The actor answers each admitted tick with :meth:`Collection.start_cycle`.
The cycle itself runs on a worker thread so HealthCheck is answered
meanwhile, and ends by handing its events to the pipeline. UpdateConfig is
applied only at a cycle boundary (:meth:`Collection.update`).
:attr:`Collection.cycles` counts finished cycles, for whoever needs to wait
for one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Final, Literal

from procmond.collect.collector import CollectorSettings, ProcessCollector
from procmond.daemon.kernel_capture import KernelCapture, KernelFactory
from procmond.daemon.messages import CollectTick, Message, UpdateConfig
from procmond.daemon.readiness import Counter
from procmond.errors import Refused
from procmond.schemas import (
    CollectorConfig,
    ConfigValidationError,
    UpdateConfigResult,
    apply_config_changes,
    changed_fields,
)
from procmond.store.pipeline import EventPipeline

__all__ = [
    "BACKPRESSURE_FACTOR",
    "BACKPRESSURE_OFF_PERCENT",
    "BACKPRESSURE_ON_PERCENT",
    "Collection",
    "collector_settings",
]

log = logging.getLogger("procmond.actor")

#: Backpressure (issue 3): above 70 % buffer the interval stretches by this
#: factor, and returns below 50 %; at 100 % collection pauses.
BACKPRESSURE_ON_PERCENT: Final = 70.0
BACKPRESSURE_OFF_PERCENT: Final = 50.0
BACKPRESSURE_FACTOR: Final = 4.0

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


def collector_settings(config: CollectorConfig) -> CollectorSettings:
    """The collector's view of the configuration."""
    return CollectorSettings(
        max_processes=config.max_processes,
        collect_enhanced_metadata=config.collect_enhanced_metadata,
        compute_executable_hashes=config.compute_executable_hashes,
    )


class Collection:
    """Cycles, their metrics, and the configuration they run with."""

    def __init__(
        self,
        config: CollectorConfig,
        collector: ProcessCollector,
        pipeline: EventPipeline,
        kernel: KernelFactory | None = None,
    ) -> None:
        self._config = config
        self._ticker: asyncio.Task[None] | None = None
        self._config_version = 1
        self._collector = collector
        self._pipeline = pipeline
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="procmond-collect")
        #: The kernel's process events (protocol section 9), merged on this thread.
        self.kernel = KernelCapture(
            kernel,
            lambda: self._config.kernel_events,
            lambda records: collector.apply_kernel(records),  # looked up when used
            self._thread,
            pipeline,
        )
        self._cycle: asyncio.Task[None] | None = None
        self._tick_wake = asyncio.Event()
        self._backpressure = False
        #: Finished cycles, failed ones included (readiness: "cycle finished").
        self.cycles = Counter()
        self.processes_collected = 0
        self.collection_errors = 0
        self.process_errors = 0
        self.consecutive_failures = 0
        self.last_cycle_failed = False
        self.last_cycle_ms: float | None = None
        self.last_collection: datetime | None = None
        self.last_error: str | None = None
        self.wal_error: str | None = None
        #: Called on the event loop with each cycle's duration in seconds (metrics).
        self.on_cycle: Callable[[float], None] | None = None

    @property
    def config(self) -> CollectorConfig:
        """The configuration in effect."""
        return self._config

    @property
    def config_version(self) -> int:
        """Starts at 1; grows by 1 with every update that changed something."""
        return self._config_version

    @property
    def running(self) -> bool:
        """True while a cycle runs."""
        return self._cycle is not None

    # Protocol section 9's figures, read by health and metrics.
    @property
    def capture_mode(self) -> Literal["kernel", "cycle"]:
        """``kernel`` while the kernel source runs, else ``cycle``."""
        return self.kernel.mode

    @property
    def kernel_events(self) -> int:
        """Kernel records received."""
        return self.kernel.received

    @property
    def kernel_events_lost(self) -> int:
        """Kernel events lost (dropped by the kernel, or a dead reader)."""
        return self.kernel.lost

    @property
    def partial_events(self) -> int:
        """Events sent partial (the process was gone before its details were read)."""
        return self.kernel.partial

    @property
    def last_kernel_loss(self) -> float | None:
        """When the last loss was seen (``time.monotonic``)."""
        return self.kernel.last_loss

    def close(self) -> None:
        """Stop the kernel source and the worker thread (a cycle in progress is abandoned)."""
        self.kernel.close()
        self._thread.shutdown(wait=False, cancel_futures=True)

    # -- the ``collect`` activity ---------------------------------------------

    async def start_collecting(self, spawn: Spawn, tell: Callable[[Message], bool]) -> None:
        """Activity ``collect`` starts: the ticker, and the kernel source where it can run."""
        self._ticker = spawn(self.ticker(tell), "procmond-ticker")
        await self.kernel.start(spawn, tell)

    async def stop_collecting(self) -> None:
        """Activity ``collect`` stops: no more ticks; kernel records received are logged."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        await self.kernel.stop()

    # -- the ticker (activity ``collect``) ----------------------------------

    def effective_interval(self) -> float:
        """The interval, stretched while the event buffer is under pressure."""
        level = self._pipeline.level_percent
        if self._backpressure and level < BACKPRESSURE_OFF_PERCENT:
            self._backpressure = False
            log.info("event buffer at %.0f%%: collection interval back to normal", level)
        elif not self._backpressure and level >= BACKPRESSURE_ON_PERCENT:
            self._backpressure = True
            log.warning("event buffer at %.0f%%: collection interval stretched", level)
        interval = self._config.collection_interval_secs
        return interval * BACKPRESSURE_FACTOR if self._backpressure else interval

    async def ticker(self, tell: Callable[[Message], bool]) -> None:
        """Post a CollectTick every interval, the first at once (the baseline)."""
        while True:
            tell(CollectTick())
            self._tick_wake.clear()
            try:
                async with asyncio.timeout(self.effective_interval()):
                    await self._tick_wake.wait()
            except TimeoutError:
                pass

    # -- cycles ---------------------------------------------------------------

    def start_cycle(self, spawn: Spawn) -> None:
        """Start a cycle in a task of ``spawn``'s group, unless one runs or the buffer is full."""
        if self._cycle is not None:
            return  # a cycle is running: this tick folds into it
        if self._pipeline.pending >= self._pipeline.capacity:
            log.warning("event buffer full (%d events): collection paused", self._pipeline.pending)
            return
        self._cycle = spawn(self._run_cycle(), "procmond-cycle")

    async def _run_cycle(self) -> None:
        started = time.monotonic()
        try:
            pipeline = self._pipeline
            if pipeline.unlogged:
                # Events of an earlier cycle wait for room in the log: collecting now
                # would move the collector's view further past them (pipeline.py).
                await pipeline.retry_unlogged()
                if pipeline.unlogged:
                    raise _LogUnavailable(pipeline.log_error or "write-ahead log unavailable")
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._thread, self._collector.collect)
            await pipeline.submit(result.events)
            if pipeline.log_error is not None:
                raise _LogUnavailable(pipeline.log_error)
        except _LogUnavailable as exc:
            self._failed()
            self.last_error = self.wal_error = str(exc)
            # pipeline.py logged the change of state; one line per cycle would flood.
        except Exception as exc:
            self._failed()
            # Log failures never get here: the pipeline holds the events and
            # reports them through log_error (the branch above).
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("collection cycle failed: %s", self.last_error)
        else:
            self.processes_collected = result.processes
            self.process_errors += result.errors
            self.consecutive_failures = 0
            self.last_cycle_failed = False
            self.wal_error = None
            self.last_collection = datetime.now(UTC)
        finally:
            elapsed = time.monotonic() - started
            self.last_cycle_ms = round(elapsed * 1000, 3)
            self._cycle = None
            if self.on_cycle is not None:
                self.on_cycle(elapsed)
            self.cycles.add()

    def _failed(self) -> None:
        self.collection_errors += 1
        self.consecutive_failures += 1
        self.last_cycle_failed = True

    async def boundary(self) -> None:
        """Return once no cycle runs (at once when none does)."""
        cycle = self._cycle
        if cycle is not None:
            await asyncio.shield(cycle)

    # -- configuration --------------------------------------------------------

    async def update(self, message: UpdateConfig) -> dict[str, Any]:
        """Validate, wait for the cycle boundary, apply; the UpdateConfig answer payload."""
        try:
            new = apply_config_changes(self._config, message.changes)
        except ConfigValidationError as exc:
            raise Refused.validation_failed(exc.errors) from exc
        if not message.validate_only:
            await self.boundary()
        changed = changed_fields(self._config, new)
        if changed and not message.validate_only:
            kernel_events_changed = new.kernel_events != self._config.kernel_events
            self._apply(new)
            if kernel_events_changed:
                await self.kernel.switch(new.kernel_events)
        return UpdateConfigResult(
            config_version=self._config_version,
            changed_fields=changed,
            config=new if message.validate_only else self._config,
        ).model_dump(mode="json")

    def _apply(self, new: CollectorConfig) -> None:
        old = self._config
        self._config = new
        self._config_version += 1
        self._collector.update_settings(collector_settings(new))
        self._pipeline.set_batch_size(new.max_events_in_flight)
        if new.collection_interval_secs != old.collection_interval_secs:
            self._tick_wake.set()
        log.info("configuration version %d in effect: %s", self._config_version, new)


class _LogUnavailable(Exception):  # noqa: N818 - a cycle outcome, reported in health
    """The write-ahead log could not take this cycle's events (they are held)."""
