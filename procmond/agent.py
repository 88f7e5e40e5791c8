"""The reference agent: answers registrations and watches collectors' heartbeats.

Theory of operation
-------------------
Two layers, in the manner of h11 (STYLE.md):

* :class:`Tracker` is the pure core. It does no I/O and reads no clock: every
  input carries an explicit monotonic ``now`` (seconds), and what happened is
  appended to :attr:`Tracker.events` as :class:`AgentEvent` values for the
  caller to print. Inputs: :meth:`~Tracker.register`,
  :meth:`~Tracker.deregister`, :meth:`~Tracker.status` (announcements),
  :meth:`~Tracker.heartbeat` and :meth:`~Tracker.tick` (the lateness timer).
* :class:`Agent` is the thin bus layer over :class:`procmond.bus.Bus`: it
  answers ``Register`` / ``Deregister`` on ``control.collector.registration``
  (protocol sections 3 and 7), feeds announcements and heartbeats
  (``psubscribe``) to the tracker, and runs the tick timer.

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
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from procmond.bus import Bus, BusError, ConnectionStatus, RedisBus
from procmond.rpc import response_topic
from procmond.schemas import (
    IDENTIFIER_PATTERN,
    MAX_MESSAGE_BYTES,
    ErrorCategory,
    HeartbeatFields,
    PayloadError,
    RequestError,
    RpcErrorBody,
    RpcResponse,
    Status,
    decode_heartbeat,
    loads_object,
    parse_deregister,
    parse_register,
    parse_request,
)

__all__ = [
    "COLLECTOR_TYPE",
    "FAILED_MISSED",
    "HEARTBEAT_PATTERN",
    "LATE_FACTOR",
    "MASS_MIN_COLLECTORS",
    "REGISTRATION_TOPIC",
    "STATUS_PATTERN",
    "Agent",
    "AgentEvent",
    "CollectorRecord",
    "EventKind",
    "Liveness",
    "Registration",
    "Tracker",
    "run_agent",
]

log = logging.getLogger("procmond.agent")

REGISTRATION_TOPIC: Final = "control.collector.registration"
HEARTBEAT_PATTERN: Final = "control.health.heartbeat.*"
STATUS_PATTERN: Final = "control.health.status.*"
_HEARTBEAT_PREFIX_LEN: Final = len(HEARTBEAT_PATTERN) - 1
_STATUS_PREFIX_LEN: Final = len(STATUS_PATTERN) - 1
COLLECTOR_TYPE: Final = "process-monitor"

#: A heartbeat up to 10 % after its interval is on time: timers, scheduling
#: and the bus add jitter, and one late heartbeat is not yet news.
LATE_FACTOR: Final = 1.1
#: Three missed heartbeats make a failure: HAProxy's default ``fall 3`` and
#: the usual missed-heartbeat factor of cluster managers; one or two misses
#: are common under load.
FAILED_MISSED: Final = 3
#: Damping needs a crowd: with one or two collectors "most went silent" is
#: no evidence about the bus.
MASS_MIN_COLLECTORS: Final = 3
#: More than this fraction silent at once suggests the bus (Kubernetes
#: uses 0.55 for a partial zone disruption; "most" is the simpler rule).
MASS_FRACTION: Final = 0.5
#: Heartbeats are ~400 bytes; anything this large is not one.
MAX_HEARTBEAT_BYTES: Final = 64 * 1024
#: Previous boot ids remembered per collector, to ignore their stragglers.
_OLD_BOOTS: Final = 4
#: Answers remembered for repeated request ids (collectors retry within seconds).
_DEDUPE_ENTRIES: Final = 4096
_IDENTIFIER: Final = re.compile(IDENTIFIER_PATTERN)


class Liveness(StrEnum):
    """The agent's verdict on a watched collector."""

    ALIVE = "alive"
    LATE = "late"
    FAILED = "failed"
    SUSPECT = "suspect"  # silent during a suspected bus problem


class EventKind(StrEnum):
    """Notable changes, one JSON line each."""

    REGISTERED = "registered"
    REJECTED = "rejected"
    DISCOVERED = "discovered"  # heard from before (or without) a Register
    STATE = "state"
    LATE = "late"
    FAILED = "failed"
    RECOVERED = "recovered"
    DEREGISTERED = "deregistered"
    LOST_HEARTBEATS = "lost_heartbeats"
    BUS_SUSPECT = "bus_suspect"
    BUS_RECOVERED = "bus_recovered"


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One notable change; ``data`` holds the kind's details (JSON-serializable)."""

    kind: EventKind
    collector_id: str | None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Registration:
    """The validated facts of a Register the tracker needs."""

    collector_id: str
    boot_id: str
    heartbeat_interval_ms: int
    hostname: str = ""
    pid: int = 0
    version: str = ""


@dataclass(slots=True)
class CollectorRecord:
    """What the agent knows about one collector (its current boot)."""

    collector_id: str
    boot_id: str
    interval_s: float
    ref: float  # monotonic time the liveness clock counts from
    lifecycle: str = "registered"
    registered: bool = False
    liveness: Liveness = Liveness.ALIVE
    last_beat: float | None = None
    sequence: int = 0
    lost: int = 0
    heartbeats: int = 0
    duplicates: int = 0
    health: str | None = None
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    hostname: str = ""
    pid: int = 0
    version: str = ""
    old_boots: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        """What the table shows: the liveness verdict when bad, else the lifecycle."""
        if self.lifecycle == "deregistered" or self.liveness is Liveness.ALIVE:
            return self.lifecycle
        return self.liveness.value

    @property
    def watched(self) -> bool:
        """Expected to heartbeat (not deregistered)."""
        return self.lifecycle != "deregistered"


class Tracker:
    """The pure core: every collector's state, from explicitly timed inputs."""

    def __init__(
        self,
        *,
        assigned_interval_ms: int | None = None,
        default_interval_ms: int = 30_000,
    ) -> None:
        self.assigned_interval_ms = assigned_interval_ms
        self.default_interval_ms = default_interval_ms
        self.collectors: dict[str, CollectorRecord] = {}
        self.events: list[AgentEvent] = []
        self.bus_suspect = False
        self.heartbeats_total = 0
        self.malformed_total = 0
        self.stale_total = 0

    def take_events(self) -> list[AgentEvent]:
        """The events since the last call, oldest first."""
        events, self.events = self.events, []
        return events

    def _emit(self, kind: EventKind, collector_id: str | None, **data: Any) -> None:
        self.events.append(AgentEvent(kind, collector_id, data))

    def _new_record(
        self, collector_id: str, boot_id: str, interval_ms: int | None, now: float
    ) -> CollectorRecord:
        old = self.collectors.get(collector_id)
        old_boots: tuple[str, ...] = ()
        if old is not None:
            old_boots = (*old.old_boots, old.boot_id)[-_OLD_BOOTS:]
        record = CollectorRecord(
            collector_id,
            boot_id,
            (interval_ms or self.assigned_interval_ms or self.default_interval_ms) / 1000,
            now,
            old_boots=old_boots,
        )
        self.collectors[collector_id] = record
        return record

    # -- registration -------------------------------------------------------

    def register(self, registration: Registration, now: float) -> int | None:
        """Accept a Register; returns the interval to assign (None: keep the collector's)."""
        cid = registration.collector_id
        record = self.collectors.get(cid)
        interval_ms = self.assigned_interval_ms or registration.heartbeat_interval_ms
        extra: dict[str, Any]
        if record is None or record.boot_id != registration.boot_id:
            previous = record.boot_id if record is not None else None
            record = self._new_record(cid, registration.boot_id, interval_ms, now)
            extra = {"previous_boot_id": previous} if previous else {}
        else:
            extra = {"re_registration": True}
            record.interval_s = interval_ms / 1000
            self._revive(record, now)
        record.registered = True
        record.hostname = registration.hostname
        record.pid = registration.pid
        record.version = registration.version
        if record.lifecycle == "deregistered":
            record.lifecycle = "registered"
        record.ref = now
        self._emit(
            EventKind.REGISTERED,
            cid,
            boot_id=registration.boot_id,
            hostname=registration.hostname,
            pid=registration.pid,
            heartbeat_interval_ms=interval_ms,
            **extra,
        )
        return self.assigned_interval_ms

    def reject(self, client_id: str | None, message: str) -> None:
        """Record that a request was refused (the bus layer answers it)."""
        self._emit(EventKind.REJECTED, client_id, message=message)

    def deregister(self, collector_id: str, boot_id: str, now: float) -> str | None:
        """Mark the boot deregistered; returns a note when it was not the known boot."""
        record = self.collectors.get(collector_id)
        if record is None or record.boot_id != boot_id:
            return f"boot {boot_id} of {collector_id} is not registered here"
        self._set_lifecycle(record, "deregistered")
        return None

    def _set_lifecycle(self, record: CollectorRecord, lifecycle: str) -> None:
        if lifecycle == record.lifecycle:
            return
        previous, record.lifecycle = record.lifecycle, lifecycle
        if lifecycle == "deregistered":
            record.liveness = Liveness.ALIVE
            self._emit(EventKind.DEREGISTERED, record.collector_id, boot_id=record.boot_id)
        else:
            self._emit(EventKind.STATE, record.collector_id, previous=previous, state=lifecycle)

    def _revive(self, record: CollectorRecord, now: float) -> None:
        previous = record.liveness
        record.liveness = Liveness.ALIVE
        record.ref = now
        # A suspect coming back is part of the bus story (one bus_recovered line).
        if previous in (Liveness.LATE, Liveness.FAILED):
            self._emit(EventKind.RECOVERED, record.collector_id, previous=previous.value)

    def _adopt(self, collector_id: str, boot_id: str, now: float) -> CollectorRecord:
        """A collector heard from without (or before) a Register for this boot."""
        old = self.collectors.get(collector_id)
        record = self._new_record(collector_id, boot_id, None, now)
        record.lifecycle = "ready"
        extra = {"previous_boot_id": old.boot_id} if old is not None else {}
        self._emit(EventKind.DISCOVERED, collector_id, boot_id=boot_id, **extra)
        return record

    def _record_for(self, collector_id: str, boot_id: str, now: float) -> CollectorRecord | None:
        record = self.collectors.get(collector_id)
        if record is not None and record.boot_id == boot_id:
            return record
        if record is not None and boot_id in record.old_boots:
            self.stale_total += 1
            return None
        return self._adopt(collector_id, boot_id, now)

    # -- announcements and heartbeats --------------------------------------

    def status(self, collector_id: str, document: dict[str, Any], now: float) -> None:
        """A lifecycle announcement on ``control.health.status.{collector_id}``."""
        boot_id = document.get("boot_id")
        state = document.get("state")
        if (
            document.get("collector_id") != collector_id
            or not isinstance(boot_id, str)
            or not isinstance(state, str)
        ):
            self.malformed_total += 1
            return
        record = self._record_for(collector_id, boot_id, now)
        if record is None:
            return
        if state == "ready":
            interval = document.get("heartbeat_interval_ms")
            if type(interval) is int and interval > 0:
                record.interval_s = interval / 1000
            self._revive(record, now)
        self._set_lifecycle(record, state)

    def heartbeat_bytes(self, collector_id: str, data: bytes, now: float) -> None:
        """Decode and apply one heartbeat (the hot path; see ``decode_heartbeat``)."""
        heartbeat = decode_heartbeat(data) if len(data) <= MAX_HEARTBEAT_BYTES else None
        if heartbeat is None:
            self.malformed_total += 1
            return
        self.heartbeat(collector_id, heartbeat, now)

    def heartbeat(self, collector_id: str, heartbeat: HeartbeatFields, now: float) -> None:
        """Apply one decoded heartbeat of ``collector_id`` (the channel's id)."""
        sequence = heartbeat.sequence
        if sequence < 1 or heartbeat.collector_id != collector_id:
            self.malformed_total += 1
            return
        record = self.collectors.get(collector_id)
        if record is None or record.boot_id != heartbeat.boot_id:
            record = self._record_for(collector_id, heartbeat.boot_id, now)
            if record is None:
                return
            if not record.registered:
                record.sequence = sequence - 1  # adopted: count gaps from here on
        last = record.sequence
        if sequence <= last:
            record.duplicates += 1
            return
        if sequence != last + 1:
            missing = sequence - last - 1
            record.lost += missing
            self._emit(
                EventKind.LOST_HEARTBEATS,
                collector_id,
                missing=missing,
                lost_total=record.lost,
                after_sequence=last,
                sequence=sequence,
            )
        self.heartbeats_total += 1
        record.sequence = sequence
        record.heartbeats += 1
        record.last_beat = now
        record.ref = now
        if record.liveness is not Liveness.ALIVE:
            self._revive(record, now)
        state = heartbeat.state
        if state is not None and state != record.lifecycle:
            self._set_lifecycle(record, state)
        record.health = heartbeat.health_status
        record.reasons = heartbeat.reasons
        record.metrics = heartbeat.metrics

    # -- the timer ------------------------------------------------------------

    def tick(self, now: float, *, bus_connected: bool = True) -> None:
        """Evaluate lateness (late, failed, bus suspect) as of ``now``."""
        watched = [
            r for r in self.collectors.values() if r.watched and r.liveness is not Liveness.FAILED
        ]
        silent = [r for r in watched if now - r.ref > r.interval_s * LATE_FACTOR]
        if self.bus_suspect:
            if bus_connected and (
                len(watched) < MASS_MIN_COLLECTORS or len(silent) <= len(watched) * MASS_FRACTION
            ):
                self.bus_suspect = False
                self._emit(EventKind.BUS_RECOVERED, None, silent=len(silent), watched=len(watched))
                for record in silent:  # a fresh grace period from now
                    record.liveness = Liveness.ALIVE
                    record.ref = now
                return
            for record in silent:
                record.liveness = Liveness.SUSPECT
            return
        if not bus_connected or (
            len(watched) >= MASS_MIN_COLLECTORS and len(silent) > len(watched) * MASS_FRACTION
        ):
            self.bus_suspect = True
            self._emit(
                EventKind.BUS_SUSPECT,
                None,
                silent=len(silent),
                watched=len(watched),
                reason="the agent is disconnected from the bus"
                if not bus_connected
                else "most collectors went silent at once",
            )
            for record in silent:
                record.liveness = Liveness.SUSPECT
            return
        for record in silent:
            age = now - record.ref
            if age > record.interval_s * (FAILED_MISSED + LATE_FACTOR - 1):
                record.liveness = Liveness.FAILED
                self._emit(
                    EventKind.FAILED,
                    record.collector_id,
                    silent_for_s=round(age, 3),
                    missed=int(age / record.interval_s),
                )
            elif record.liveness is Liveness.ALIVE:
                record.liveness = Liveness.LATE
                self._emit(EventKind.LATE, record.collector_id, silent_for_s=round(age, 3))


# -- the bus layer ------------------------------------------------------------


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
        await self.bus.subscribe(REGISTRATION_TOPIC, self._on_registration)
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

    def _on_registration(self, channel: str, data: bytes) -> None:
        started = self._clock()
        document = loads_object(data) if len(data) <= MAX_MESSAGE_BYTES else None
        client_id = document.get("client_id") if document is not None else None
        if document is None or not isinstance(client_id, str) or not _IDENTIFIER.match(client_id):
            self.rpc_malformed_total += 1
            log.debug("dropped an unanswerable message on %s", channel)
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


async def run_agent(
    url: str,
    *,
    json_output: bool,
    heartbeat_interval_ms: int | None,
    service_id: str = "agent",
    stop: asyncio.Event | None = None,
) -> int:
    """``procmond agent``: run until ``stop`` is set (or SIGINT/SIGTERM); returns 0."""
    from procmond.agent_view import JsonLines, LiveTable

    stop = stop or asyncio.Event()
    tracker = Tracker(assigned_interval_ms=heartbeat_interval_ms)
    view: JsonLines | LiveTable
    if json_output or not sys.stdout.isatty():
        view = JsonLines(sys.stdout)
    else:
        view = LiveTable(sys.stdout)
    bus = RedisBus(url, name=f"procmond-{service_id}")
    agent = Agent(bus, tracker, on_events=view.events, service_id=service_id)
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests): the caller's stop event rules
    try:
        await agent.start()
        await bus.start()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(agent.run(stop), name="agent-timer")
            tasks.create_task(view.run(agent, stop), name="agent-view")
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        await agent.close()
        await bus.close()
        view.close()
    return 0
