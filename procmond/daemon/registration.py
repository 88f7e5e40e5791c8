"""The collector's side of protocol section 7: Register, announcements, heartbeats, Deregister.

The :class:`Registrar` performs what the lifecycle table declares about the
agent relation (announcements and heartbeats are :mod:`procmond.daemon.publisher`'s) and
reports what happened; it never fires a trigger (STYLE 10: only the actor
does). The actor calls it for the table's actions and activities:

* ``schedule registration`` (entering ``unregistered``):
  :meth:`Registrar.schedule` waits the retry delay (none before the first
  attempt; then exponential backoff from 1 s to 60 s with +-20 % jitter),
  then until the bus is connected, and sends the actor
  :class:`~procmond.daemon.messages.RegistrationDue`; after
  ``max_attempts`` failures in a row it gives up instead;
* ``send Register`` (entering ``registering``): :meth:`Registrar.send_register`
  publishes a ``Register`` on ``control.registration.{collector_id}``
  (protocol v2) and makes its request id the attempt in flight. The answer on
  ``control.rpc.response.{collector_id}``, or the 10 s timer, or a publish
  failure, comes back to the actor as
  :class:`~procmond.daemon.messages.RegisterOutcome` naming that id;
* ``end attempt`` (leaving ``registering``): the attempt in flight is
  forgotten, so a late answer to it is stale (guard ``answer_is_current``);
* ``send Deregister`` (leaving ``draining``): sent if the agent ever
  accepted us, waiting at most 2 s for the answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from procmond.bus.types import Bus, BusError
from procmond.daemon.messages import (
    DrainReport,
    Message,
    RegisterOutcome,
    RegistrationDue,
)
from procmond.daemon.operations import CAPABILITIES
from procmond.daemon.readiness import Counter
from procmond.protocol import MAX_HEARTBEAT_INTERVAL_MS, MIN_HEARTBEAT_INTERVAL_MS
from procmond.schemas import (
    AgentResponse,
    DeregisterPayload,
    OutgoingRequest,
    RegisterPayload,
    parse_agent_response,
    parse_registration_answer,
)
from procmond.topics import registration_topic, response_topic

__all__ = [
    "ATTEMPT_TIMEOUT_S",
    "BACKOFF_INITIAL_S",
    "BACKOFF_JITTER",
    "BACKOFF_MAX_S",
    "DEFAULT_HEARTBEAT_INTERVAL_MS",
    "DEREGISTER_TIMEOUT_S",
    "Identity",
    "Registrar",
    "RegistrationSettings",
    "backoff_delays",
]

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
#: How often the wait for a connected bus re-checks (it also wakes on Connected).
_BUS_WAIT_S: Final = 1.0

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


@dataclass(frozen=True)
class Identity:
    """Who this collector is, for Register, health payloads and announcements."""

    collector_id: str
    boot_id: str
    hostname: str
    pid: int
    version: str


def backoff_delays(
    initial: float = BACKOFF_INITIAL_S,
    maximum: float = BACKOFF_MAX_S,
    jitter: float = BACKOFF_JITTER,
    rng: random.Random | None = None,
) -> Sequence[float]:
    """An endless-enough sequence of retry delays (exposed for tests)."""
    rng = rng or random.Random()
    delays = []
    base = initial
    for _ in range(64):
        delays.append(base * rng.uniform(1 - jitter, 1 + jitter))
        base = min(base * 2, maximum)
    return delays


@dataclass
class RegistrationSettings:
    """Knobs of the registrar; defaults are the protocol's."""

    heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS
    attempt_timeout_s: float = ATTEMPT_TIMEOUT_S
    backoff_initial_s: float = BACKOFF_INITIAL_S
    backoff_max_s: float = BACKOFF_MAX_S
    max_attempts: int | None = None  # None: retry without limit


class Registrar:
    """Register attempts, Deregister, announcements and heartbeats of one collector."""

    def __init__(
        self,
        bus: Bus,
        identity: Identity,
        settings: RegistrationSettings | None = None,
        *,
        tell: Callable[[Message], bool],
        spawn: Spawn,
        rng: random.Random | None = None,
        on_give_up: Callable[[str], None] | None = None,
    ) -> None:
        """``tell`` reaches the actor; ``spawn`` starts a task the actor's group owns."""
        self._bus = bus
        self._identity = identity
        self._settings = settings or RegistrationSettings()
        self._tell = tell
        self._spawn = spawn
        self._rng = rng or random.Random()
        self._on_give_up = on_give_up
        self._cid = identity.collector_id
        self._interval_ms = self._settings.heartbeat_interval_ms
        self._delays = self._backoff()
        self._attempt: asyncio.Task[None] | None = None
        self._due: asyncio.Task[None] | None = None
        self._register_ids: set[str] = set()
        self._pending: dict[str, asyncio.Future[AgentResponse]] = {}
        #: The request id of the Register attempt in flight, None between attempts.
        self.attempt_id: str | None = None
        self.accepted_once = False
        self.attempts = 0
        self.failures = 0
        self.last_rejection: str | None = None
        #: Times a due attempt found the bus down and waits for it (readiness).
        self.waiting_for_bus = Counter()

    @property
    def heartbeat_interval_ms(self) -> int:
        """The interval in force (the agent's assignment wins)."""
        return self._interval_ms

    # -- activity "listen" -----------------------------------------------------

    async def listen(self) -> None:
        """Subscribe to our response topic (before any request is sent)."""
        await self._bus.subscribe(response_topic(self._cid), self._on_response)

    async def unlisten(self) -> None:
        """Stop listening for answers."""
        try:
            await self._bus.unsubscribe(response_topic(self._cid))
        except BusError as exc:
            log.debug("unsubscribe %s: %s", response_topic(self._cid), exc)

    # -- registration ------------------------------------------------------

    def _backoff(self) -> Iterator[float]:
        """A fresh sequence of retry delays (protocol section 7: 1 s to 60 s, +-20 %)."""
        settings = self._settings
        return iter(
            backoff_delays(
                settings.backoff_initial_s, settings.backoff_max_s, BACKOFF_JITTER, self._rng
            )
        )

    def schedule(self) -> None:
        """Action ``schedule registration``: RegistrationDue after the retry delay."""
        limit = self._settings.max_attempts
        if limit is not None and self.failures >= limit:
            if self._on_give_up is not None:
                self._on_give_up(f"registration failed {self.failures} time(s) in a row")
            return
        delay = next(self._delays, self._settings.backoff_max_s) if self.failures else 0.0
        if self.failures:
            log.info("registration attempt %d failed; retrying in %.2f s", self.failures, delay)
        self._due_in(delay)

    def retry_when_connected(self) -> None:
        """The guard ``bus_connected`` refused a due attempt: try again once the bus is up."""
        self._due_in(0.0)

    def _due_in(self, delay: float) -> None:
        if self._due is not None:
            self._due.cancel()
        self._due = self._spawn(self._due_after(delay), "procmond-registration-due")

    async def _due_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if not await self._bus.wait_connected(timeout=0):
            self.waiting_for_bus.add()
            while not await self._bus.wait_connected(timeout=_BUS_WAIT_S):
                pass
        self._due = None
        self._tell(RegistrationDue())

    def send_register(self) -> None:
        """Action ``send Register``: a new attempt, in flight until its outcome."""
        self.attempts += 1
        request_id = f"{self._cid}-register-{uuid.uuid4().hex[:16]}"
        self.attempt_id = request_id
        self._register_ids.add(request_id)
        self._attempt = self._spawn(self._run_attempt(request_id), "procmond-register")

    async def _run_attempt(self, request_id: str) -> None:
        identity = self._identity
        payload = RegisterPayload(
            collector_id=self._cid,
            version=identity.version,
            capabilities=list(CAPABILITIES),
            pid=identity.pid,
            hostname=identity.hostname,
            boot_id=identity.boot_id,
            heartbeat_interval_ms=self._interval_ms,
        )
        timeout = self._settings.attempt_timeout_s
        try:
            await self._send("Register", request_id, payload.model_dump(mode="json"), timeout)
        except BusError as exc:
            log.warning("Register request not sent: %s", exc)
            self._tell(RegisterOutcome(request_id, None, f"not sent: {exc}"))
            return
        await asyncio.sleep(timeout)
        log.warning("no answer to Register within %.0f s", timeout)
        self._tell(RegisterOutcome(request_id, None, f"no answer within {timeout:g} s"))

    def end_attempt(self) -> None:
        """Action ``end attempt``: forget the attempt in flight and its timer."""
        self.attempt_id = None
        if self._attempt is not None:
            self._attempt.cancel()
            self._attempt = None

    def record(self, outcome: RegisterOutcome) -> None:
        """Take in the outcome of the attempt in flight (its guard passed)."""
        answer = outcome.answer
        if outcome.accepted and answer is not None:
            self._assign_interval(answer.heartbeat_interval_ms)
            self.accepted_once = True
            self.failures = 0
            self._delays = self._backoff()
            log.info("registered with the agent (attempt %d)", self.attempts)
            return
        self.failures += 1
        if answer is not None:
            self.last_rejection = answer.message
            log.warning("registration rejected by the agent: %s", answer.message)

    def _assign_interval(self, assigned: int | None) -> None:
        """The agent's interval wins, if within 1,000..3,600,000 ms (protocol section 7).

        One outside is ignored, with a warning, and our own used: a forged
        answer assigning 1 ms made a collector send 1,263 heartbeats in 3 s
        (issue 11).
        """
        if assigned is None:
            return
        if MIN_HEARTBEAT_INTERVAL_MS <= assigned <= MAX_HEARTBEAT_INTERVAL_MS:
            self._interval_ms = assigned
            return
        self._interval_ms = self._settings.heartbeat_interval_ms
        log.warning(
            "ignoring the heartbeat interval of %d ms assigned by the agent (outside "
            "%d..%d ms): heartbeating every %d ms",
            assigned,
            MIN_HEARTBEAT_INTERVAL_MS,
            MAX_HEARTBEAT_INTERVAL_MS,
            self._interval_ms,
        )

    def _on_response(self, channel: str, data: bytes) -> None:
        response = parse_agent_response(data)
        if response is None:
            return
        request_id = response.request_id
        if request_id in self._register_ids:
            answer = parse_registration_answer(response.payload)
            if answer is None:
                log.warning("registration answer unreadable: %s", response)
            why = "" if answer is not None else "unreadable answer"
            self._tell(RegisterOutcome(request_id, answer, why))
            return
        future = self._pending.get(request_id)
        if future is not None and not future.done():
            future.set_result(response)

    # -- deregistration ---------------------------------------------------

    async def deregister(self, report: DrainReport) -> None:
        """Action ``send Deregister``: if we were ever accepted, wait at most 2 s."""
        if not self.accepted_once:
            return
        payload = DeregisterPayload(
            collector_id=self._cid,
            boot_id=self._identity.boot_id,
            reason=report.reason,
            events_flushed=report.result.events_flushed,
            wal_pending=report.result.wal_pending,
        )
        request_id = f"{self._cid}-deregister-{uuid.uuid4().hex[:16]}"
        future: asyncio.Future[AgentResponse] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send(
                "Deregister", request_id, payload.model_dump(mode="json"), DEREGISTER_TIMEOUT_S
            )
            async with asyncio.timeout(DEREGISTER_TIMEOUT_S):
                await future
        except BusError as exc:
            log.warning("Deregister request not sent: %s", exc)
        except TimeoutError:
            log.warning("no answer to Deregister within %.0f s", DEREGISTER_TIMEOUT_S)
        finally:
            self._pending.pop(request_id, None)

    async def _send(
        self, operation: str, request_id: str, payload: dict[str, object], timeout: float
    ) -> None:
        topic = registration_topic(self._cid)
        request = OutgoingRequest.expiring(
            request_id=request_id,
            client_id=self._cid,
            target=topic,
            operation=operation,
            payload=payload,
            timeout_s=timeout,
        )
        if await self._bus.publish(topic, request.to_bytes()) == 0:
            log.warning("no agent listening on %s", topic)
