"""The collector actor: one task owns the lifecycle and everything it drives.

Theory of operation
-------------------
Everything that changes the collector reaches one task as a message in a
bounded mailbox (:mod:`procmond.daemon.mailbox`): the agent's RPCs (through
:mod:`procmond.daemon.rpc`), the daemon's ticks, and the *inputs* the other
parts report (a registration is due, a Register outcome, the bus is back,
the drain ended; :mod:`procmond.daemon.messages`). Admission is decided by
:mod:`fsm`: an operation the current state does not accept is refused at
once with the typed error of protocol section 4, an input whose trigger the
state does not declare is dropped, a full mailbox answers ``BUSY``; nothing
ever blocks the caller. Accepted messages are handled one at a time, in
arrival order, and checked against the state again when their turn comes.

This task is the lifecycle's only writer (STYLE 10). It fires a trigger
with the facts it holds at that moment (is the bus connected now; is this
the answer to the attempt in flight), and when the state changes it
performs what :func:`fsm.move` says the change means, in order: the actions
of the state left, the activities stopped and started (listening,
collecting, heartbeating), the actions of the state entered (send Register,
announce, start the drain, send Deregister, stop). No state name is
compared here: the table decides, the actor performs.

Every task the actor starts (cycle, ticker, heartbeat timer, publisher,
registration timers, drain) belongs to its task group, so none outlives it;
when the actor stops, every message still queued is answered
``SHUTTING_DOWN``: no caller hangs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from fsm import (
    Facts,
    Lifecycle,
    Refusal,
    State,
    Trigger,
    initial_move,
    move,
    target,
    transition_for,
)
from procmond.bus.types import Bus
from procmond.collect.collector import ProcessCollector
from procmond.daemon.collection import Collection
from procmond.daemon.drain import answer_drained, drain
from procmond.daemon.effects import Performer, Service
from procmond.daemon.health import health_payload
from procmond.daemon.kernel_capture import KernelFactory
from procmond.daemon.mailbox import DEFAULT_MAILBOX_SIZE, Envelope, Mailbox
from procmond.daemon.messages import (
    BusRestored,
    CollectTick,
    DrainFinished,
    DrainReport,
    GracefulShutdown,
    HealthCheck,
    HeartbeatTick,
    Input,
    Message,
    Outcome,
    RegisterOutcome,
    RegistrationDue,
    Request,
    UpdateConfig,
    refusal_error,
)
from procmond.daemon.publisher import Publisher
from procmond.daemon.registration import Identity, Registrar, RegistrationSettings
from procmond.errors import Refused
from procmond.protocol import ConnectionStatus
from procmond.schemas import CollectorConfig, HealthPayload
from procmond.store.pipeline import EventPipeline

__all__ = ["ProcmondMonitorCollector", "StateListener"]

log = logging.getLogger("procmond.actor")

StateListener = Callable[[State, State, Trigger], None]
_INPUTS: Final = (RegistrationDue, RegisterOutcome, BusRestored, DrainFinished)


class ProcmondMonitorCollector:
    """The actor. Create it, attach its services, then run :meth:`run` in a task group."""

    def __init__(
        self,
        identity: Identity,
        config: CollectorConfig,
        collector: ProcessCollector,
        pipeline: EventPipeline,
        bus: Bus,
        *,
        registration: RegistrationSettings | None = None,
        mailbox_size: int = DEFAULT_MAILBOX_SIZE,
        kernel: KernelFactory | None = None,
        rng: random.Random | None = None,
        on_give_up: Callable[[str], None] | None = None,
    ) -> None:
        self.identity = identity
        self._bus = bus
        self._pipeline = pipeline
        self.collection = Collection(config, collector, pipeline, kernel)
        self.registrar = Registrar(
            bus,
            identity,
            registration,
            tell=self.tell,
            spawn=self._spawn,
            rng=rng,
            on_give_up=on_give_up,
        )
        self.publisher = Publisher(
            bus,
            identity.collector_id,
            identity.boot_id,
            lambda: self.registrar.heartbeat_interval_ms,
        )
        self._mailbox = Mailbox(mailbox_size)
        self._listeners: list[StateListener] = []
        self.lifecycle = Lifecycle(on_change=self._state_changed)
        self._started_monotonic = time.monotonic()
        self._tasks: asyncio.TaskGroup | None = None
        self._owned: set[asyncio.Task[None]] = set()
        self._shutdown: tuple[GracefulShutdown, Envelope | None] | None = None
        self._bus_lost = False
        self._stopped = False
        #: The drain's report once it ended (what the exit line says).
        self.report: DrainReport | None = None
        self._performer = Performer(
            self.registrar,
            self.publisher,
            self.collection,
            spawn=self._spawn,
            tell=self.tell,
            health=self.health,
            drain=self._drain,
            report=lambda: self.report,
            fail_pending=self._fail_pending,
            close_mailbox=self._mailbox.close,
        )
        #: Times each state was entered, its effects performed (readiness).
        self.entered = self._performer.entered
        self.rpc_malformed_total = 0
        bus.add_status_listener(self._on_bus_status)

    # -- wiring and public state ---------------------------------------------

    def serve(self, service: Service) -> None:
        """Have ``service`` listen while the lifecycle's ``listen`` activity runs."""
        self._performer.services.append(service)

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(old, new, trigger)`` right after every move."""
        self._listeners.append(listener)

    @property
    def state(self) -> State:
        """The current lifecycle state."""
        return self.lifecycle.state

    @property
    def config(self) -> CollectorConfig:
        """The configuration in effect."""
        return self.collection.config

    @property
    def config_version(self) -> int:
        """Starts at 1; grows by 1 with every update that changed something."""
        return self.collection.config_version

    @property
    def mailbox(self) -> Mailbox:
        """The mailbox (its counters: depth, peak, BUSY answers, messages taken)."""
        return self._mailbox

    def _state_changed(self, old: State, new: State, trigger: Trigger) -> None:
        log.info("lifecycle %s -> %s (%s)", old.value, new.value, trigger.value)
        for listener in self._listeners:
            listener(old, new, trigger)

    def _on_bus_status(self, status: ConnectionStatus) -> None:
        if status is not ConnectionStatus.CONNECTED:
            self._bus_lost = True
        elif self._bus_lost:
            self._bus_lost = False
            self.tell(BusRestored())

    # -- the mailbox's doors --------------------------------------------------

    def _refusal(self, message: Request) -> Refused | None:
        if self._stopped:
            return Refused.shutting_down(self.state.value, {"operation": message.operation.value})
        admission = self.lifecycle.admit(message.operation)
        return refusal_error(admission) if isinstance(admission, Refusal) else None

    def offer(
        self, message: Request, *, deadline: float | None = None, priority: bool = False
    ) -> asyncio.Future[Outcome]:
        """Queue ``message``; its future resolves to an :class:`Outcome`.

        Raises :class:`Refused` at once when the state refuses the message or
        the mailbox is full (``priority`` messages skip the bound).
        ``deadline`` is on the ``time.monotonic`` clock.
        """
        refusal = self._refusal(message)
        if refusal is not None:
            raise refusal
        return self._mailbox.put(message, deadline=deadline, priority=priority)

    async def ask(
        self, message: Request, deadline: float, *, deadline_name: str = "the deadline"
    ) -> Outcome:
        """Queue ``message`` and wait for its outcome until ``deadline`` (``time.monotonic``).

        Refusals, ``BUSY``, ``DEADLINE_EXCEEDED`` (withdrawn, nothing ran) and
        ``TIMEOUT`` all come back as outcomes: the caller never hangs.
        """
        refusal = self._refusal(message)
        if refusal is not None:
            return Outcome(error=refusal)
        return await self._mailbox.ask(message, deadline, deadline_name=deadline_name)

    def tell(self, message: Message, *, priority: bool = True) -> bool:
        """Fire and forget the daemon's own messages (ticks, inputs, signals).

        False when the current state does not take it (an input whose trigger
        it does not declare, an operation it refuses) or the actor stopped.
        """
        if isinstance(message, _INPUTS):
            if self._stopped or transition_for(self.state, message.trigger) is None:
                log.debug("%s not taken in state %s", type(message).__name__, self.state.value)
                return False
            self._mailbox.put(message, priority=True)
            return True
        try:
            self.offer(message, priority=priority)
        except Refused:
            return False
        return True

    # -- the actor task -------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Start a task the actor's group owns."""
        assert self._tasks is not None, "the actor is not running"
        task = self._tasks.create_task(coro, name=name)
        self._owned.add(task)
        task.add_done_callback(self._owned.discard)
        return task

    async def run(self) -> DrainReport | None:
        """Enter the initial state and serve the mailbox until ``stop``; the drain's report."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                self._spawn(self.publisher.run(), "procmond-publisher")
                await self._performer.perform(initial_move())
                while (envelope := await self._mailbox.get()) is not None:
                    await self._handle(envelope)
                for task in list(self._owned):
                    task.cancel()
        finally:
            self._stopped = True
            self._fail_pending()
            self.collection.close()
        return self.report

    def stop(self) -> None:
        """End the actor from outside; queued messages are answered SHUTTING_DOWN."""
        self._stopped = True
        self._mailbox.close()

    def _fail_pending(self) -> None:
        def error(envelope: Envelope) -> Refused:
            name = getattr(envelope.message, "operation", type(envelope.message).__name__)
            return Refused.shutting_down(self.state.value, {"operation": str(name)})

        self._mailbox.fail_all(error)

    async def _handle(self, envelope: Envelope) -> None:
        message = envelope.message
        if not isinstance(message, Request):
            await self._take_input(message)
            envelope.future.set_result(Outcome())
            return
        started = envelope.started_at
        queue_ms = (started - envelope.enqueued_at) * 1000
        refusal = self._refusal(message)
        if refusal is not None:
            envelope.future.set_result(Outcome(error=refusal, queue_ms=queue_ms))
            return
        try:
            if envelope.deadline is None:
                payload = await self._execute(message, envelope)
            else:
                async with asyncio.timeout(envelope.deadline - time.monotonic()):
                    payload = await self._execute(message, envelope)
            outcome = Outcome(payload=payload)
        except _Deferred:
            return
        except Refused as exc:
            outcome = Outcome(error=exc)
        except TimeoutError:
            outcome = Outcome(error=Refused.timeout("execution did not finish before the deadline"))
        except Exception as exc:  # the daemon keeps running (protocol section 4: INTERNAL)
            log.exception("internal error handling %s", message.operation.value)
            outcome = Outcome(error=Refused.internal(f"{type(exc).__name__}: {exc}"))
        if not envelope.future.done():
            outcome.queue_ms = queue_ms
            outcome.execution_ms = (time.monotonic() - started) * 1000
            envelope.future.set_result(outcome)

    async def _execute(self, message: Request, envelope: Envelope) -> dict[str, Any] | None:
        if isinstance(message, HealthCheck):
            return self.health().model_dump(mode="json")
        if isinstance(message, UpdateConfig):
            return await self.collection.update(message)
        if isinstance(message, CollectTick):
            self.collection.start_cycle(self._spawn)
            return None
        if isinstance(message, HeartbeatTick):
            self.publisher.heartbeat(self.health())
            return None
        # GracefulShutdown: the drain answers the future itself, later.
        self._shutdown = (message, envelope)
        await self._fire(Trigger.SHUTDOWN_REQUESTED, Facts())
        raise _Deferred

    # -- inputs, triggers and their effects -------------------------------------

    def _facts(self, message: Input) -> Facts:
        """What the guards read, as the daemon knows it right now."""
        return Facts(
            bus_connected=self._bus.status is ConnectionStatus.CONNECTED,
            answer_is_current=not isinstance(message, RegisterOutcome)
            or message.request_id == self.registrar.attempt_id,
        )

    async def _take_input(self, message: Input) -> None:
        trigger = message.trigger
        if transition_for(self.state, trigger) is None:
            log.debug("%s ignored in state %s", type(message).__name__, self.state.value)
            return
        facts = self._facts(message)
        if not self.lifecycle.can_fire(trigger, facts):
            log.info("%s refused by its guard in state %s", trigger.value, self.state.value)
            if isinstance(message, RegistrationDue):
                self.registrar.retry_when_connected()  # the bus dropped meanwhile
            return
        if isinstance(message, RegisterOutcome):
            self.registrar.record(message)
        elif isinstance(message, DrainFinished):
            self.report = message.report
        await self._fire(trigger, facts)

    async def _fire(self, trigger: Trigger, facts: Facts) -> None:
        """Leave the state (its exit actions, while still in it), move, enter the new one."""
        old, new = self.state, target(self.state, trigger)
        if new is None or not self.lifecycle.can_fire(trigger, facts):
            return
        change = move(old, new)
        await self._performer.leave(change)
        self.lifecycle.fire(trigger, facts)  # the facts are unchanged: the guards pass again
        await self._performer.enter(change)

    async def _drain(self) -> None:
        assert self._shutdown is not None
        message, envelope = self._shutdown
        mailbox = self._mailbox
        report = await drain(
            self._pipeline,
            self.collection.boundary,
            message.reason or "GracefulShutdown requested",
            message.timeout_s,
            mailbox_note=f"; mailbox peak {mailbox.high_water} of {mailbox.size}, "
            f"{mailbox.busy_total} requests answered BUSY",
        )
        if envelope is not None:
            answer_drained(envelope, report)
        self.tell(DrainFinished(report))

    # -- health -----------------------------------------------------------------

    def health(self) -> HealthPayload:
        """The HealthCheck answer (heartbeats are built from the same assessment)."""
        return health_payload(
            self.identity,
            self.state,
            self._bus.status,
            time.monotonic() - self._started_monotonic,
            self.collection,
            self._pipeline,
            heartbeats_sent=self.publisher.heartbeats_sent.value,
            rpc_malformed_total=self.rpc_malformed_total,
            loss_window_s=self.registrar.heartbeat_interval_ms / 1000,
        )


class _Deferred(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The handler answers later (GracefulShutdown)."""
