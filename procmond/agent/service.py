"""The reference agent: answers registrations and watches collectors' heartbeats.

Theory of operation
-------------------
Two layers, in the manner of h11 (STYLE.md):

* :class:`Tracker` (in :mod:`procmond.agent.tracker`) is the pure core. It does no
  I/O and reads no clock: every input carries an explicit monotonic ``now``
  (seconds), and what happened is appended to :attr:`Tracker.events` as
  :class:`AgentEvent` values for the caller to print. Inputs: :meth:`~Tracker.register`,
  :meth:`~Tracker.deregister`, :meth:`~Tracker.status` (announcements),
  :meth:`~Tracker.heartbeat` and :meth:`~Tracker.tick` (the lateness timer).
* :class:`Agent` is the thin bus layer over :class:`procmond.bus.types.Bus`:
  it answers ``Register`` / ``Deregister`` arriving on
  ``control.registration.{collector_id}`` (protocol version 2, sections 2, 3
  and 7; it pattern-subscribes ``control.registration.*``), feeds
  announcements and heartbeats (``psubscribe``) to the tracker, and runs the
  tick timer.

Liveness. Ages are measured on the agent's own monotonic clock from when a
message *arrived*, never from the collector's ``timestamp`` (hosts' clocks
differ). A watched collector (registered, ``ready`` or ``draining``) whose
last heartbeat (or registration, or ``ready``) is older than
``interval x LATE_FACTOR`` is ``late``; once it missed ``FAILED_MISSED``
intervals it is ``failed``. Any heartbeat brings it back (``recovered``).
Lateness is evaluated on the timer, not per message, so the hot path stays a
``json.loads``, a few type checks and dictionary stores.

Mass-failure damping. When the agent's own bus is down, or more than half of
at least ``MASS_MIN_COLLECTORS`` watched, not-failed collectors are silent at
the same time, the likelier cause is the bus, not the collectors: the agent
reports ``bus_suspect`` once and marks them ``suspect`` instead of ``failed``
(Kubernetes' node lifecycle controller stops evicting in a zone in full
disruption for the same reason). When most are heard again it reports
``bus_recovered`` and gives the still-silent ones a fresh grace period from
that moment, after which the normal rules apply.

Sequences. ``sequence`` grows by one per heartbeat of a ``boot_id``
(protocol section 7), so a gap of k numbers is k lost heartbeats. Counting
starts at 0 for a boot the agent saw register, and at the first heartbeat
seen for a collector it adopted from its heartbeats (an agent started after
its collectors). A new ``boot_id`` starts new counters; heartbeats of a
replaced boot are ignored (counted as ``stale``); repeats are ignored.

Capture mode. Each heartbeat's ``metrics.capture_mode`` (protocol section 9:
``kernel`` or ``cycle``) is kept with the collector and shown in the table;
the first of a boot and every change is a ``capture_mode`` event (not the
``cycle`` of a draining collector, which stopped collecting: not a fallback).

Topics. A request on ``control.registration.X`` whose ``client_id`` is not
``X`` is dropped unanswered and counted in ``rpc_malformed_total``, like a
message that names no usable ``client_id``. A collector registers on its own
topic only (protocol v2, section 2), and the topic is what a Redis ACL can
grant to one collector alone; honouring another ``client_id`` there would let
a collector register or deregister in another's name.

Answers. A valid ``Register`` for a ``process-monitor`` whose ``client_id``
equals its ``collector_id`` is answered ``Success`` with payload
``{status: "Accepted", message: null, heartbeat_interval_ms}`` (the assigned
interval, or null to keep the collector's own). Anything else that can be
answered (the envelope names a usable ``client_id``) gets ``Error`` with
``INVALID_REQUEST`` (``UNSUPPORTED_OPERATION`` for other operations) *and* a
payload ``{status: "Rejected", message}``, so that a collector reading only
the payload sees the reason. ``deadline`` is not enforced: registering late is
harmless and hosts' clocks may disagree. A repeated ``request_id`` gets the
first answer again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from procmond.agent.schemas import parse_deregister, parse_register
from procmond.agent.tracker import (
    FAILED_MISSED,
    LATE_FACTOR,
    MASS_MIN_COLLECTORS,
    MAX_HEARTBEAT_BYTES,
    AgentEvent,
    CollectorRecord,
    EventKind,
    Liveness,
    Registration,
    Tracker,
)
from procmond.bus.redis import Bus, BusError, ConnectionStatus
from procmond.protocol import IDENTIFIER, MAX_MESSAGE_BYTES, ErrorCategory, Status
from procmond.schemas import (
    PayloadError,
    RequestError,
    RpcErrorBody,
    RpcResponse,
    loads_object,
    parse_request,
)
from procmond.topics import (
    HEARTBEAT_PATTERN,
    REGISTRATION_PATTERN,
    STATUS_PATTERN,
    response_topic,
)

__all__ = [
    "COLLECTOR_TYPE",
    "FAILED_MISSED",
    "HEARTBEAT_PATTERN",
    "LATE_FACTOR",
    "MASS_MIN_COLLECTORS",
    "REGISTRATION_PATTERN",
    "STATUS_PATTERN",
    "Agent",
    "AgentEvent",
    "CollectorRecord",
    "EventKind",
    "Liveness",
    "Registration",
    "Tracker",
]

log = logging.getLogger("procmond.agent")

_HEARTBEAT_PREFIX_LEN: Final = len(HEARTBEAT_PATTERN) - 1
_STATUS_PREFIX_LEN: Final = len(STATUS_PATTERN) - 1
_REGISTRATION_PREFIX_LEN: Final = len(REGISTRATION_PATTERN) - 1
COLLECTOR_TYPE: Final = "process-monitor"

#: Answers remembered for repeated request ids (collectors retry within seconds).
_DEDUPE_ENTRIES: Final = 4096


def _rejected(message: str) -> dict[str, Any]:
    return {"status": "Rejected", "message": message, "heartbeat_interval_ms": None}


class Agent:
    """Connects a :class:`Tracker` to a :class:`Bus`; ``on_events`` prints what happened."""

    def __init__(
        self,
        bus: Bus,
        tracker: Tracker,
        *,
        on_events: Callable[[list[AgentEvent]], None],
        service_id: str = "agent",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.tracker = tracker
        self.service_id = service_id
        self._on_events = on_events
        self._clock = clock
        self._answers: collections.OrderedDict[tuple[str, str], bytes] = collections.OrderedDict()
        self._sending: set[asyncio.Task[None]] = set()
        self.requests_total = 0
        self.responses_total = 0
        self.rpc_malformed_total = 0
        self._ever_connected = False

    async def start(self) -> None:
        """Subscribe (a RedisBus confirms them before it reports Connected)."""
        await self.bus.psubscribe(REGISTRATION_PATTERN, self._on_registration)
        await self.bus.psubscribe(STATUS_PATTERN, self._on_status)
        await self.bus.psubscribe(HEARTBEAT_PATTERN, self._on_heartbeat)

    def _flush(self) -> None:
        if self.tracker.events:
            self._on_events(self.tracker.take_events())

    def tick(self) -> None:
        """Run the tracker's timer now and hand over the events."""
        connected = self.bus.status is ConnectionStatus.CONNECTED
        self._ever_connected = self._ever_connected or connected
        # Not yet connected at start-up is no bus problem: nothing was heard yet.
        self.tracker.tick(self._clock(), bus_connected=connected or not self._ever_connected)
        self._flush()

    async def run(self, stop: asyncio.Event, tick_s: float = 0.25) -> None:
        """Tick every ``tick_s`` until ``stop`` is set."""
        while not stop.is_set():
            self.tick()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick_s):
                    await stop.wait()

    async def close(self, timeout: float = 2.0) -> None:
        """Wait (bounded) for the answers being sent."""
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=timeout)

    # -- handlers (called on the event loop; must not block) ----------------

    def _on_heartbeat(self, pattern: str, channel: str, data: bytes) -> None:
        self.tracker.heartbeat_bytes(channel[_HEARTBEAT_PREFIX_LEN:], data, self._clock())
        if self.tracker.events:
            self._on_events(self.tracker.take_events())

    def _on_status(self, pattern: str, channel: str, data: bytes) -> None:
        document = loads_object(data) if len(data) <= MAX_HEARTBEAT_BYTES else None
        if document is None:
            self.tracker.malformed_total += 1
            return
        self.tracker.status(channel[_STATUS_PREFIX_LEN:], document, self._clock())
        self._flush()

    def _on_registration(self, pattern: str, channel: str, data: bytes) -> None:
        started = self._clock()
        document = loads_object(data) if len(data) <= MAX_MESSAGE_BYTES else None
        client_id = document.get("client_id") if document is not None else None
        if (
            document is None
            or not isinstance(client_id, str)
            or not IDENTIFIER.fullmatch(client_id)
        ):
            self.rpc_malformed_total += 1
            log.debug("dropped an unanswerable message on %s", channel)
            return
        if client_id != channel[_REGISTRATION_PREFIX_LEN:]:
            # Protocol section 2 (v2): a collector registers on its own topic only.
            self.rpc_malformed_total += 1
            log.debug("dropped a request from %r on %s, not its own topic", client_id, channel)
            return
        self.requests_total += 1
        raw_id = document.get("request_id")
        key = (client_id, raw_id if isinstance(raw_id, str) else "")
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answer(document, client_id, started)
            self._answers[key] = answer
            if len(self._answers) > _DEDUPE_ENTRIES:
                self._answers.popitem(last=False)
        self._flush()
        task = asyncio.get_running_loop().create_task(self._send(client_id, answer))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, client_id: str, answer: bytes) -> None:
        try:
            await self.bus.publish(response_topic(client_id), answer)
            self.responses_total += 1
        except BusError as exc:
            log.warning("answer to %s not sent: %s", client_id, exc)

    def _answer(self, document: dict[str, Any], client_id: str, started: float) -> bytes:
        raw_id = document.get("request_id")
        raw_op = document.get("operation")
        request_id = raw_id if isinstance(raw_id, str) else ""
        operation = raw_op if isinstance(raw_op, str) else ""
        raw_corr = document.get("correlation_id")
        correlation_id = raw_corr if isinstance(raw_corr, str) else request_id
        try:
            request = parse_request(document)
        except RequestError as exc:
            return self._reject(client_id, request_id, correlation_id, operation, str(exc), started)
        request_id = request.request_id
        correlation_id = request.correlation_id or request.request_id
        now = self._clock()
        try:
            if operation == "Register":
                registration = _registration(client_id, request.payload)
                interval = self.tracker.register(registration, now)
                payload = {"status": "Accepted", "message": None, "heartbeat_interval_ms": interval}
            elif operation == "Deregister":
                dereg = parse_deregister(request.payload)
                if dereg.collector_id != client_id:
                    raise PayloadError(
                        f"client_id {client_id!r} does not match collector_id "
                        f"{dereg.collector_id!r}"
                    )
                note = self.tracker.deregister(dereg.collector_id, dereg.boot_id, now)
                payload = {"status": "Accepted", "message": note}
            else:
                return self._reject(
                    client_id,
                    request_id,
                    correlation_id,
                    operation,
                    f"operation {operation!r} is not served here (Register, Deregister)",
                    started,
                    code="UNSUPPORTED_OPERATION",
                )
        except PayloadError as exc:
            return self._reject(client_id, request_id, correlation_id, operation, str(exc), started)
        return self._response(
            request_id, correlation_id, operation, Status.SUCCESS, payload, None, started
        )

    def _reject(
        self,
        client_id: str,
        request_id: str,
        correlation_id: str,
        operation: str,
        message: str,
        started: float,
        *,
        code: str = "INVALID_REQUEST",
    ) -> bytes:
        self.tracker.reject(client_id, message)
        error = RpcErrorBody(
            code=code, message=message, category=ErrorCategory.CONFIGURATION, context={}
        )
        return self._response(
            request_id, correlation_id, operation, Status.ERROR, _rejected(message), error, started
        )

    def _response(
        self,
        request_id: str,
        correlation_id: str,
        operation: str,
        status: Status,
        payload: dict[str, Any],
        error: RpcErrorBody | None,
        started: float,
    ) -> bytes:
        elapsed_ms = round((self._clock() - started) * 1000, 3)
        return RpcResponse(
            request_id=request_id,
            correlation_id=correlation_id,
            operation=operation,
            service_id=self.service_id,
            status=status,
            payload=payload,
            error=error,
            state="ready",
            timestamp=datetime.now(UTC),
            queue_time_ms=0.0,
            execution_time_ms=elapsed_ms,
            total_time_ms=elapsed_ms,
        ).to_bytes()


def _registration(client_id: str, payload: dict[str, Any] | None) -> Registration:
    """Validate a Register payload for this agent; :class:`PayloadError` says why not."""
    register = parse_register(payload)
    if register.collector_type != COLLECTOR_TYPE:
        raise PayloadError(
            f"collector_type {register.collector_type!r} is not supervised here "
            f"(only {COLLECTOR_TYPE!r})"
        )
    if register.collector_id != client_id:
        raise PayloadError(
            f"client_id {client_id!r} does not match collector_id {register.collector_id!r}"
        )
    return Registration(
        register.collector_id,
        register.boot_id,
        register.heartbeat_interval_ms,
        register.hostname,
        register.pid,
        register.version,
    )


# -- the command ----------------------------------------------------------------
