"""The collector actor: one task owns the collector's state.

Everything that changes the collector goes through a bounded mailbox of
messages (:mod:`procmond.daemon.mailbox`), each with a future for its answer (the
"oneshot"). Admission is decided by :mod:`fsm`: a message the current
lifecycle state does not accept is refused at once with the typed error of
protocol section 4, and a full mailbox answers ``BUSY``; nothing ever blocks
the caller. Accepted messages
are executed one at a time, in arrival order, and checked against the state
again when their turn comes (the state may have moved meanwhile).

The collection cycle runs on a worker thread, so HealthCheck is answered
while a cycle runs. UpdateConfig is applied only between cycles and answered
once in effect. GracefulShutdown starts the drain as a task of its own (the
mailbox keeps serving HealthCheck) and is answered when the drain is done.
When the actor stops, every message still queued is answered
``SHUTTING_DOWN``: no caller hangs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from fsm import Facts, Lifecycle, Operation, Refusal, State, Trigger
from procmond import __version__
from procmond.collect.collector import CollectorSettings, ProcessCollector
from procmond.daemon.health import HealthInputs, assess
from procmond.daemon.mailbox import DEFAULT_MAILBOX_SIZE, Envelope, Mailbox
from procmond.daemon.messages import (
    CollectTick,
    GracefulShutdown,
    HealthCheck,
    Message,
    Outcome,
    UpdateConfig,
    refusal_error,
)
from procmond.errors import Refused
from procmond.schemas import (
    CollectorConfig,
    ConfigValidationError,
    HealthMetrics,
    HealthPayload,
    HealthStatus,
    ShutdownResult,
    UpdateConfigResult,
    apply_config_changes,
    changed_fields,
)
from procmond.store.pipeline import EventPipeline
from procmond.store.wal import WalError

log = logging.getLogger("procmond.actor")

#: Backpressure (issue 3): above 70 % buffer the interval stretches by this
#: factor, and returns below 50 %; at 100 % collection pauses.
BACKPRESSURE_ON_PERCENT: Final = 70.0
BACKPRESSURE_OFF_PERCENT: Final = 50.0
BACKPRESSURE_FACTOR: Final = 4.0


@dataclass(frozen=True)
class Identity:
    """Who this collector is, for health payloads and announcements."""

    collector_id: str
    boot_id: str
    hostname: str
    pid: int
    version: str = __version__


@dataclass
class DrainReport:
    """The outcome of a drain, for the Deregister request."""

    reason: str
    result: ShutdownResult
    #: Events seen but never written to the log (it refused them): lost at exit.
    unlogged: int = 0


class ProcmondMonitorCollector:
    """The actor. Create it, then run :meth:`run` in a task group."""

    def __init__(
        self,
        identity: Identity,
        config: CollectorConfig,
        collector: ProcessCollector,
        pipeline: EventPipeline,
        *,
        connection_status: Callable[[], str],
        mailbox_size: int = DEFAULT_MAILBOX_SIZE,
        on_state_change: Callable[[State, State, Trigger], None] | None = None,
    ) -> None:
        self.identity = identity
        self._config = config
        self._config_version = 1
        self._collector = collector
        self._pipeline = pipeline
        self._connection_status = connection_status
        self._mailbox = Mailbox(mailbox_size)
        self._listeners: list[Callable[[State, State, Trigger], None]] = []
        if on_state_change is not None:
            self._listeners.append(on_state_change)
        self.lifecycle = Lifecycle(on_change=self._state_changed)
        self._started_monotonic = time.monotonic()
        self._collect_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="procmond-collect"
        )
        self._cycle: asyncio.Task[None] | None = None
        self._drain: asyncio.Task[None] | None = None
        self._tick_wake = asyncio.Event()
        self._stopped = False
        self.drained: asyncio.Future[DrainReport] = asyncio.get_running_loop().create_future()
        # metrics
        self.processes_collected = 0
        self.collection_cycles = 0
        self.collection_errors = 0
        self.process_errors = 0
        self.consecutive_failures = 0
        self.last_cycle_failed = False
        self.last_cycle_ms: float | None = None
        self.last_collection: datetime | None = None
        self.last_error: str | None = None
        self.wal_error: str | None = None
        self.heartbeats_sent = 0
        self.rpc_malformed_total = 0
        self._backpressure = False

    # -- public: lifecycle --------------------------------------------------

    @property
    def state(self) -> State:
        """The current lifecycle state."""
        return self.lifecycle.state

    @property
    def config(self) -> CollectorConfig:
        """The configuration in effect."""
        return self._config

    @property
    def config_version(self) -> int:
        """Starts at 1; grows by 1 with every update that changed something."""
        return self._config_version

    def add_state_listener(self, listener: Callable[[State, State, Trigger], None]) -> None:
        """Call ``listener(old, new, trigger)`` after every move."""
        self._listeners.append(listener)

    def fire(self, trigger: Trigger, facts: Facts | None = None) -> bool:
        """Move the lifecycle (registration manager and daemon inputs)."""
        return self.lifecycle.fire(trigger, facts or Facts())

    def admits(self, operation: Operation) -> bool:
        """Whether the current state accepts ``operation``."""
        return self.lifecycle.admit(operation).accepted

    def _state_changed(self, old: State, new: State, trigger: Trigger) -> None:
        log.info("lifecycle %s -> %s (%s)", old.value, new.value, trigger.value)
        for listener in self._listeners:
            listener(old, new, trigger)

    # -- public: mailbox ----------------------------------------------------

    @property
    def mailbox_depth(self) -> int:
        """Messages waiting."""
        return len(self._mailbox)

    @property
    def mailbox_high_water(self) -> int:
        """The most requests the mailbox held (at most its size)."""
        return self._mailbox.high_water

    @property
    def busy_total(self) -> int:
        """Requests answered BUSY because the mailbox was full."""
        return self._mailbox.busy_total

    def offer(
        self, message: Message, *, deadline: float | None = None, priority: bool = False
    ) -> asyncio.Future[Outcome]:
        """Queue ``message``; its future resolves to an :class:`Outcome`.

        Raises :class:`Refused` at once when the state refuses the message or
        the mailbox is full (``priority`` messages, signals, skip the bound).
        ``deadline`` is on the ``time.monotonic`` clock.
        """
        if self._stopped:
            raise Refused.shutting_down(self.state.value, {"operation": message.operation.value})
        admission = self.lifecycle.admit(message.operation)
        if isinstance(admission, Refusal):
            raise refusal_error(admission)
        return self._mailbox.put(message, deadline=deadline, priority=priority)

    def withdraw(self, future: asyncio.Future[Outcome]) -> bool:
        """Take a still-queued message back (its caller gave up); False once it started."""
        return self._mailbox.withdraw(future)

    def tell(self, message: Message, *, priority: bool = False) -> bool:
        """Fire and forget; False when refused or full."""
        try:
            self.offer(message, priority=priority)
        except Refused:
            return False
        return True

    async def ask(self, message: Message, timeout: float) -> Outcome:
        """Offer and wait at most ``timeout`` seconds (refusals come back as outcomes)."""
        try:
            future = self.offer(message, deadline=time.monotonic() + timeout)
        except Refused as exc:
            return Outcome(error=exc)
        async with asyncio.timeout(timeout):
            return await asyncio.shield(future)

    # -- the actor task -----------------------------------------------------

    async def run(self) -> None:
        """Serve the mailbox until :meth:`stop`; owns the cycle and drain tasks."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                tasks.create_task(self._ticker(), name="procmond-ticker")
                while (envelope := await self._mailbox.get()) is not None:
                    await self._handle(envelope)
                raise _Stop
        except* _Stop:
            pass
        finally:
            self._fail_pending()
            self._collect_thread.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        """End the actor; queued messages are answered SHUTTING_DOWN."""
        self._stopped = True
        self._mailbox.close()

    def _fail_pending(self) -> None:
        self._mailbox.fail_all(
            lambda envelope: Refused.shutting_down(
                self.state.value, {"operation": envelope.message.operation.value}
            )
        )

    async def _handle(self, envelope: Envelope) -> None:
        now = time.monotonic()
        envelope.started_at = now
        queue_ms = (now - envelope.enqueued_at) * 1000
        if envelope.future.done():  # the caller gave up (timeout) before its turn
            return
        if envelope.deadline is not None and now >= envelope.deadline:
            error = Refused.deadline_exceeded("the deadline passed while queued")
            envelope.future.set_result(Outcome(error=error, queue_ms=queue_ms))
            return
        admission = self.lifecycle.admit(envelope.message.operation)
        if isinstance(admission, Refusal):
            envelope.future.set_result(Outcome(error=refusal_error(admission), queue_ms=queue_ms))
            return
        try:
            if envelope.deadline is None:
                payload = await self._execute(envelope)
            else:
                async with asyncio.timeout_at(_loop_time(envelope.deadline)):
                    payload = await self._execute(envelope)
            outcome = Outcome(payload=payload)
        except _Deferred:
            return
        except Refused as exc:
            outcome = Outcome(error=exc)
        except TimeoutError:
            outcome = Outcome(error=Refused.timeout("execution did not finish before the deadline"))
        except Exception as exc:  # the daemon keeps running (protocol section 4: INTERNAL)
            log.exception("internal error handling %s", envelope.message.operation.value)
            outcome = Outcome(error=Refused.internal(f"{type(exc).__name__}: {exc}"))
        if not envelope.future.done():
            outcome.queue_ms = queue_ms
            outcome.execution_ms = _ms_since(now)
            envelope.future.set_result(outcome)

    async def _execute(self, envelope: Envelope) -> dict[str, Any] | None:
        message = envelope.message
        if isinstance(message, HealthCheck):
            return self.health().model_dump(mode="json")
        if isinstance(message, UpdateConfig):
            return await self._update_config(message)
        if isinstance(message, CollectTick):
            self._start_cycle()
            return None
        # GracefulShutdown: the drain answers the future itself, later.
        self._begin_drain(message, envelope)
        raise _Deferred

    # -- collection ---------------------------------------------------------

    def _effective_interval(self) -> float:
        level = self._pipeline.level_percent
        if self._backpressure and level < BACKPRESSURE_OFF_PERCENT:
            self._backpressure = False
            log.info("event buffer at %.0f%%: collection interval back to normal", level)
        elif not self._backpressure and level >= BACKPRESSURE_ON_PERCENT:
            self._backpressure = True
            log.warning("event buffer at %.0f%%: collection interval stretched", level)
        interval = self._config.collection_interval_secs
        return interval * BACKPRESSURE_FACTOR if self._backpressure else interval

    async def _ticker(self) -> None:
        """Post a CollectTick every interval; the first at once (the baseline)."""
        while True:
            if self.lifecycle.admit(Operation.COLLECT_TICK).accepted:
                self.tell(CollectTick(), priority=True)
            elif self.state in (State.DRAINING, State.DEREGISTERED):
                return
            self._tick_wake.clear()
            try:
                async with asyncio.timeout(self._effective_interval()):
                    await self._tick_wake.wait()
            except TimeoutError:
                pass

    def _start_cycle(self) -> None:
        if self._cycle is not None:
            return  # a cycle is running: this tick folds into it
        if self._pipeline.pending >= self._pipeline.capacity:
            log.warning("event buffer full (%d events): collection paused", self._pipeline.pending)
            return
        self._cycle = self._tasks.create_task(self._run_cycle(), name="procmond-cycle")

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
            result = await loop.run_in_executor(self._collect_thread, self._collector.collect)
            await pipeline.submit(result.events)
            if pipeline.log_error is not None:
                raise _LogUnavailable(pipeline.log_error)
        except _LogUnavailable as exc:
            self.collection_errors += 1
            self.consecutive_failures += 1
            self.last_cycle_failed = True
            self.last_error = self.wal_error = str(exc)
            # pipeline.py logged the change of state; one line per cycle would flood.
        except Exception as exc:
            self.collection_errors += 1
            self.consecutive_failures += 1
            self.last_cycle_failed = True
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
            self.collection_cycles += 1
            self.last_cycle_ms = round(_ms_since(started), 3)
            self._cycle = None

    async def _cycle_boundary(self) -> None:
        cycle = self._cycle
        if cycle is not None:
            await asyncio.shield(cycle)

    # -- configuration --------------------------------------------------------

    async def _update_config(self, message: UpdateConfig) -> dict[str, Any]:
        try:
            new = apply_config_changes(self._config, message.changes)
        except ConfigValidationError as exc:
            raise Refused.validation_failed(exc.errors) from exc
        if message.validate_only:
            changed = changed_fields(self._config, new)
            return UpdateConfigResult(
                config_version=self._config_version, changed_fields=changed, config=new
            ).model_dump(mode="json")
        await self._cycle_boundary()
        changed = changed_fields(self._config, new)
        if changed:
            self._apply(new)
        return UpdateConfigResult(
            config_version=self._config_version, changed_fields=changed, config=self._config
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

    # -- drain ----------------------------------------------------------------

    def _begin_drain(self, message: GracefulShutdown, envelope: Envelope) -> None:
        self.fire(Trigger.SHUTDOWN_REQUESTED)
        reason = message.reason or "GracefulShutdown requested"
        self._drain = self._tasks.create_task(
            self._run_drain(reason, message.timeout_s, envelope), name="procmond-drain"
        )

    async def _run_drain(self, reason: str, timeout_s: float, envelope: Envelope) -> None:
        started = time.monotonic()
        deadline = started + timeout_s
        published_before = self._pipeline.events_published
        complete = True
        try:
            async with asyncio.timeout(timeout_s):
                await self._cycle_boundary()
        except TimeoutError:
            complete = False
        remaining = max(0.0, deadline - time.monotonic())
        complete = await self._pipeline.flush(remaining) and complete
        while self._pipeline.unlogged and complete:
            # Held events (the log was full): flushing freed room; log and flush them.
            if not await self._pipeline.retry_unlogged():
                break
            remaining = max(0.0, deadline - time.monotonic())
            complete = await self._pipeline.flush(remaining)
        if self._pipeline.unlogged:
            complete = False
            log.error(
                "%d events could not be written to the log before exit and are lost: %s",
                self._pipeline.unlogged,
                self._pipeline.log_error,
            )
        try:
            await self._pipeline.sync()
        except WalError as exc:
            log.error("could not sync the write-ahead log during drain: %s", exc)
        result = ShutdownResult(
            events_flushed=self._pipeline.events_published - published_before,
            wal_pending=self._pipeline.pending,
            drain_ms=round(_ms_since(started), 3),
            complete=complete,
        )
        log.info(
            "drain %s in %.0f ms: %d events flushed, %d left in the log; "
            "mailbox peak %d of %d, %d requests answered BUSY",
            "complete" if complete else "timed out",
            result.drain_ms,
            result.events_flushed,
            result.wal_pending,
            self.mailbox_high_water,
            self._mailbox.size,
            self.busy_total,
        )
        if not envelope.future.done():
            envelope.future.set_result(
                Outcome(
                    payload=result.model_dump(mode="json"),
                    queue_ms=(envelope.started_at - envelope.enqueued_at) * 1000,
                    execution_ms=_ms_since(envelope.started_at),
                )
            )
        if not self.drained.done():
            self.drained.set_result(DrainReport(reason, result, self._pipeline.unlogged))

    # -- health -----------------------------------------------------------

    def health_verdict(self) -> tuple[HealthStatus, list[str]]:
        """Protocol section 6's health status and reasons."""
        wal = self._pipeline.wal
        status, reasons = assess(
            HealthInputs(
                state=self.state,
                connection_status=self._connection_status(),
                buffer_level_percent=self._pipeline.level_percent,
                consecutive_failed_cycles=self.consecutive_failures,
                last_cycle_failed=self.last_cycle_failed,
                wal_near_cap=wal.usage_fraction >= 0.9,
                wal_error=self.wal_error,
            )
        )
        return HealthStatus(status), reasons

    def health(self) -> HealthPayload:
        """The HealthCheck answer."""
        status, reasons = self.health_verdict()
        identity = self.identity
        return HealthPayload(
            collector_id=identity.collector_id,
            boot_id=identity.boot_id,
            state=self.state.value,
            status=status,
            reasons=reasons,
            connection_status=self._connection_status(),
            uptime_seconds=round(time.monotonic() - self._started_monotonic, 3),
            pid=identity.pid,
            hostname=identity.hostname,
            version=identity.version,
            config=self._config,
            config_version=self._config_version,
            last_collection=self.last_collection,
            metrics=HealthMetrics(
                processes_collected=self.processes_collected,
                events_published=self._pipeline.events_published,
                buffer_level_percent=self._pipeline.level_percent,
                collection_cycles=self.collection_cycles,
                collection_errors=self.collection_errors,
                last_cycle_ms=self.last_cycle_ms,
                wal_pending=self._pipeline.pending,
                heartbeats_sent=self.heartbeats_sent,
                rpc_malformed_total=self.rpc_malformed_total,
            ),
        )


def collector_settings(config: CollectorConfig) -> CollectorSettings:
    """The collector's view of the configuration."""
    return CollectorSettings(
        max_processes=config.max_processes,
        collect_enhanced_metadata=config.collect_enhanced_metadata,
        compute_executable_hashes=config.compute_executable_hashes,
    )


class _LogUnavailable(Exception):  # noqa: N818 - a cycle outcome, reported in health
    """The write-ahead log could not take this cycle's events (they are held)."""


class _Stop(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Ends the actor's task group."""


class _Deferred(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The handler answers later (GracefulShutdown)."""


def _ms_since(start: float) -> float:
    return (time.monotonic() - start) * 1000


def _loop_time(monotonic_deadline: float) -> float:
    """asyncio's clock is ``time.monotonic`` on every platform we run on."""
    return asyncio.get_running_loop().time() + (monotonic_deadline - time.monotonic())
