"""Registration manager: Register, ready, heartbeats, Deregister (protocol section 7).

It drives the lifecycle's registration triggers and nothing else:

* while ``unregistered`` and the bus is connected, it fires
  ``start_registration`` and sends a ``Register`` request on
  ``control.registration.{collector_id}``, waiting 10 s for the agent's answer on
  ``control.rpc.response.{collector_id}``;
* ``Accepted`` fires ``registration_accepted``; anything else (rejection,
  timeout, bus failure) fires ``registration_failed`` and waits an
  exponential backoff from 1 s to 60 s with +-20 % jitter;
* when the bus comes back after a loss while ``ready``, it fires
  ``bus_restored`` and registers again, so the agent learns of us again;
* every state change worth announcing (``ready``, ``draining``,
  ``deregistered``) is published on ``control.health.status.{id}``, in
  order, by one announcer task;
* heartbeats go out every interval while ``ready`` or ``draining``, the
  first one right after each ``ready``, numbered from 1 for this boot; a
  heartbeat that cannot be sent still uses its number.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from fsm import Facts, Operation, State, Trigger
from procmond.bus.redis import Bus, BusError, ConnectionStatus
from procmond.daemon.actor import ProcmondMonitorCollector
from procmond.daemon.operations import CAPABILITIES
from procmond.logs import RateLimitedLog
from procmond.schemas import (
    AgentResponse,
    DeregisterPayload,
    Heartbeat,
    HeartbeatMetrics,
    OutgoingRequest,
    RegisterPayload,
    RegistrationAnswer,
    ShutdownResult,
    StatusAnnouncement,
    parse_agent_response,
    parse_registration_answer,
)
from procmond.topics import heartbeat_topic, registration_topic, response_topic, status_topic

log = logging.getLogger("procmond.registration")

#: Protocol section 7: each Register attempt waits 10 s for the answer.
ATTEMPT_TIMEOUT_S: Final = 10.0
#: Protocol section 7: backoff from 1 s to 60 s, +-20 % jitter.
BACKOFF_INITIAL_S: Final = 1.0
BACKOFF_MAX_S: Final = 60.0
BACKOFF_JITTER: Final = 0.2
#: Protocol section 7: wait at most 2 s for the Deregister answer.
DEREGISTER_TIMEOUT_S: Final = 2.0
#: Protocol section 7: 30 s heartbeat unless the agent assigns another.
DEFAULT_HEARTBEAT_INTERVAL_MS: Final = 30_000
#: At most one "could not publish" warning per topic per this many seconds.
PUBLISH_WARNING_INTERVAL_S: Final = 10.0


def backoff_delays(
    initial: float = BACKOFF_INITIAL_S,
    maximum: float = BACKOFF_MAX_S,
    jitter: float = BACKOFF_JITTER,
    rng: random.Random | None = None,
) -> Sequence[float]:
    """An endless-enough iterator of retry delays (exposed for tests)."""
    rng = rng or random.Random()
    delays = []
    base = initial
    for _ in range(64):
        delays.append(base * rng.uniform(1 - jitter, 1 + jitter))
        base = min(base * 2, maximum)
    return delays


@dataclass
class RegistrationSettings:
    """Knobs of the manager; defaults are the protocol's."""

    heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS
    attempt_timeout_s: float = ATTEMPT_TIMEOUT_S
    backoff_initial_s: float = BACKOFF_INITIAL_S
    backoff_max_s: float = BACKOFF_MAX_S
    max_attempts: int | None = None  # None: retry without limit


class RegistrationFailed(Exception):  # noqa: N818 - names the event, like the trigger
    """``max_attempts`` registration attempts failed."""


class RegistrationManager:
    """Owns registration, announcements and heartbeats for one collector."""

    def __init__(
        self,
        actor: ProcmondMonitorCollector,
        bus: Bus,
        settings: RegistrationSettings | None = None,
        *,
        rng: random.Random | None = None,
        on_give_up: Callable[[str], None] | None = None,
    ) -> None:
        """``on_give_up`` is called when ``max_attempts`` failed (else run() raises)."""
        self._actor = actor
        self._on_give_up = on_give_up
        self._bus = bus
        self._settings = settings or RegistrationSettings()
        self._rng = rng or random.Random()
        identity = actor.identity
        self._collector_id = identity.collector_id
        self._boot_id = identity.boot_id
        self._interval_ms = self._settings.heartbeat_interval_ms
        self._pending: dict[str, asyncio.Future[AgentResponse]] = {}
        self._publish_log = RateLimitedLog(log, PUBLISH_WARNING_INTERVAL_S)
        self._announcements: asyncio.Queue[State] = asyncio.Queue()
        self._heartbeat_now = asyncio.Event()
        # Set on every state change and when the bus comes back: wakes the loop.
        self._wake = asyncio.Event()
        self._restore_pending = False
        self._bus_was_lost = False
        self.accepted_once = False
        self.attempts = 0
        self.heartbeat_sequence = 0
        self.heartbeats_failed = 0
        self.last_rejection: str | None = None
        actor.add_state_listener(self._on_state_change)
        bus.add_status_listener(self._on_bus_status)

    @property
    def heartbeat_interval_ms(self) -> int:
        """The interval in force (the agent's assignment wins)."""
        return self._interval_ms

    async def start(self) -> None:
        """Subscribe to our response topic (before any request is sent)."""
        await self._bus.subscribe(response_topic(self._collector_id), self._on_response)

    async def run(self) -> None:
        """Registration loop, announcer and heartbeats; ends once ``deregistered`` is announced."""
        async with asyncio.TaskGroup() as tasks:
            announcer = tasks.create_task(self._announcer(), name="procmond-announcer")
            heartbeats = tasks.create_task(self._heartbeats(), name="procmond-heartbeat")
            try:
                await self._register_loop()
            except RegistrationFailed as exc:
                if self._on_give_up is None:
                    raise
                # Leaving is the daemon's call; the announcer stays to tell
                # the bus about draining and deregistered on the way out.
                self._on_give_up(str(exc))
            await announcer
            heartbeats.cancel()

    # -- registration -----------------------------------------------------

    def _backoff(self) -> Iterator[float]:
        """A fresh sequence of retry delays (protocol section 7: 1 s to 60 s, ±20 %)."""
        return iter(
            backoff_delays(
                self._settings.backoff_initial_s,
                self._settings.backoff_max_s,
                BACKOFF_JITTER,
                self._rng,
            )
        )

    async def _register_loop(self) -> None:
        delays = self._backoff()
        failures = 0
        while True:
            state = self._actor.state
            if state in (State.DRAINING, State.DEREGISTERED):
                return
            if state is State.READY:
                while self._current_state() is State.READY and not self._restore_pending:
                    self._wake.clear()
                    await self._wake.wait()
                if self._current_state() is not State.READY:
                    continue
                self._restore_pending = False
                log.info("bus restored: registering again")
                self._actor.fire(Trigger.BUS_RESTORED)
            else:
                connected = await self._bus.wait_connected(timeout=1.0)
                if not connected or self._actor.state is not State.UNREGISTERED:
                    continue
                if not self._actor.fire(Trigger.START_REGISTRATION, Facts(bus_connected=True)):
                    continue
            answer = await self._attempt()
            if self._current_state() is not State.REGISTERING:
                return  # a shutdown request moved us on meanwhile
            if answer is not None and answer.status == "Accepted":
                if answer.heartbeat_interval_ms:
                    self._interval_ms = answer.heartbeat_interval_ms
                self.accepted_once = True
                self._restore_pending = False  # a loss before this answer is moot now
                failures = 0
                delays = self._backoff()
                self._actor.fire(Trigger.REGISTRATION_ACCEPTED)
                continue
            self._actor.fire(Trigger.REGISTRATION_FAILED)
            failures += 1
            limit = self._settings.max_attempts
            if limit is not None and failures >= limit:
                raise RegistrationFailed(f"registration failed {failures} time(s) in a row")
            delay = next(delays, self._settings.backoff_max_s)
            log.info("registration attempt %d failed; retrying in %.2f s", failures, delay)
            await self._sleep_unless_leaving(delay)

    def _current_state(self) -> State:
        """The state now (a call, so the type checker does not narrow across awaits)."""
        return self._actor.state

    async def _sleep_unless_leaving(self, delay: float) -> None:
        try:
            async with asyncio.timeout(delay):
                while self._current_state() is State.UNREGISTERED:
                    self._wake.clear()
                    await self._wake.wait()
        except TimeoutError:
            pass

    async def _attempt(self) -> RegistrationAnswer | None:
        self.attempts += 1
        payload = RegisterPayload(
            collector_id=self._collector_id,
            version=self._actor.identity.version,
            capabilities=list(CAPABILITIES),
            pid=self._actor.identity.pid,
            hostname=self._actor.identity.hostname,
            boot_id=self._boot_id,
            heartbeat_interval_ms=self._interval_ms,
        )
        response = await self._request(
            "Register",
            payload.model_dump(mode="json"),
            self._settings.attempt_timeout_s,
            only_while=State.REGISTERING,
        )
        if response is None:
            return None
        answer = parse_registration_answer(response.payload)
        if answer is None:
            log.warning("registration answer unreadable: %s", response)
            return None
        if answer.status != "Accepted":
            self.last_rejection = answer.message
            log.warning("registration rejected by the agent: %s", answer.message)
        else:
            log.info("registered with the agent (attempt %d)", self.attempts)
        return answer

    async def _request(
        self,
        operation: str,
        payload: dict[str, object],
        timeout: float,
        *,
        only_while: State | None = None,
    ) -> AgentResponse | None:
        """Send a request to the agent and wait for its answer.

        With ``only_while``, stop waiting (None) as soon as the lifecycle
        leaves that state: a shutdown must not wait out a Register attempt.
        """
        request_id = f"{self._collector_id}-{operation.lower()}-{uuid.uuid4().hex[:16]}"
        request = OutgoingRequest.expiring(
            request_id=request_id,
            client_id=self._collector_id,
            target=registration_topic(self._collector_id),
            operation=operation,
            payload=payload,
            timeout_s=timeout,
        )
        future: asyncio.Future[AgentResponse] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            receivers = await self._bus.publish(
                registration_topic(self._collector_id), request.to_bytes()
            )
            if receivers == 0:
                log.warning("no agent listening on %s", registration_topic(self._collector_id))
            async with asyncio.timeout(timeout):
                while not future.done():
                    if only_while is not None and self._current_state() is not only_while:
                        return None
                    self._wake.clear()
                    woken = asyncio.ensure_future(self._wake.wait())
                    waiting: set[asyncio.Future[Any]] = {future, woken}
                    try:
                        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        woken.cancel()
                return future.result()
        except BusError as exc:
            log.warning("%s request not sent: %s", operation, exc)
            return None
        except TimeoutError:
            log.warning("no answer to %s within %.0f s", operation, timeout)
            return None
        finally:
            self._pending.pop(request_id, None)

    def _on_response(self, channel: str, data: bytes) -> None:
        response = parse_agent_response(data)
        if response is None:
            return
        future = self._pending.get(response.request_id)
        if future is not None and not future.done():
            future.set_result(response)

    # -- deregistration ---------------------------------------------------

    async def deregister(self, reason: str, result: ShutdownResult) -> None:
        """Send Deregister (if we were ever accepted), wait at most 2 s."""
        if not self.accepted_once:
            return
        payload = DeregisterPayload(
            collector_id=self._collector_id,
            boot_id=self._boot_id,
            reason=reason,
            events_flushed=result.events_flushed,
            wal_pending=result.wal_pending,
        )
        await self._request("Deregister", payload.model_dump(mode="json"), DEREGISTER_TIMEOUT_S)

    # -- announcements and heartbeats -------------------------------------

    def _on_state_change(self, old: State, new: State, trigger: Trigger) -> None:
        self._wake.set()
        if new in (State.READY, State.DRAINING, State.DEREGISTERED):
            self._announcements.put_nowait(new)

    def _on_bus_status(self, status: ConnectionStatus) -> None:
        if status is ConnectionStatus.CONNECTED:
            if self._bus_was_lost:
                self._bus_was_lost = False
                self._restore_pending = True
                self._wake.set()
        else:
            self._bus_was_lost = True

    async def _announcer(self) -> None:
        while True:
            state = await self._announcements.get()
            announcement = StatusAnnouncement(
                collector_id=self._collector_id,
                boot_id=self._boot_id,
                state=state.value,
                timestamp=datetime.now(UTC),
                heartbeat_interval_ms=self._interval_ms if state is State.READY else None,
            )
            await self._publish(status_topic(self._collector_id), announcement.to_bytes())
            if state is State.READY:
                self._heartbeat_now.set()
            if state is State.DEREGISTERED:
                return

    async def _heartbeats(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._interval_ms / 1000):
                    await self._heartbeat_now.wait()
            except TimeoutError:
                pass
            self._heartbeat_now.clear()
            if self._actor.admits(Operation.HEARTBEAT_TICK):
                await self.send_heartbeat()

    async def send_heartbeat(self) -> None:
        """Publish one heartbeat; its number is used even if the bus is down."""
        self.heartbeat_sequence += 1
        health = self._actor.health()  # one assessment: status, reasons and metrics agree
        heartbeat = Heartbeat(
            collector_id=self._collector_id,
            boot_id=self._boot_id,
            sequence=self.heartbeat_sequence,
            timestamp=datetime.now(UTC),
            state=health.state,
            health_status=health.status,
            reasons=health.reasons,
            metrics=HeartbeatMetrics(
                processes_collected=health.metrics.processes_collected,
                events_published=health.metrics.events_published,
                buffer_level_percent=health.metrics.buffer_level_percent,
                connection_status=health.connection_status,
                config_version=health.config_version,
            ),
        )
        if await self._publish(heartbeat_topic(self._collector_id), heartbeat.to_bytes()):
            self._actor.heartbeats_sent += 1
        else:
            self.heartbeats_failed += 1

    async def _publish(self, topic: str, data: bytes) -> bool:
        try:
            await self._bus.publish(topic, data)
        except BusError as exc:
            # While the bus is down this fails every heartbeat: say it once a while.
            self._publish_log(logging.WARNING, topic, "could not publish on %s: %s", topic, exc)
            return False
        return True
