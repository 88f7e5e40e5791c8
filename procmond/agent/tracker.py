"""The reference agent's pure core: what it knows of each collector.

:class:`Tracker` does no I/O and reads no clock: every input carries an
explicit monotonic ``now`` (seconds), and what happened is appended to
:attr:`Tracker.events` as :class:`AgentEvent` values for the caller to print.
Inputs: :meth:`~Tracker.register`, :meth:`~Tracker.deregister`,
:meth:`~Tracker.status` (announcements), :meth:`~Tracker.heartbeat` and
:meth:`~Tracker.tick` (the lateness timer). The liveness, damping and
sequence rules are described in :mod:`procmond.agent.service`; the bus layer is
:class:`procmond.agent.service.Agent`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from procmond.agent.schemas import HeartbeatFields, decode_heartbeat

__all__ = [
    "FAILED_MISSED",
    "LATE_FACTOR",
    "MASS_MIN_COLLECTORS",
    "AgentEvent",
    "CollectorRecord",
    "EventKind",
    "Liveness",
    "Registration",
    "Tracker",
]

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
    CAPTURE_MODE = "capture_mode"  # first heard, or changed while not draining (section 9)


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
    def capture_mode(self) -> str | None:
        """``kernel`` or ``cycle`` from the last heartbeat (None: not heard, or version 1)."""
        mode = self.metrics.get("capture_mode")
        return mode if isinstance(mode, str) else None

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
        # A boot's `draining` comes before its Deregister, but not always over the bus
        # (different connections): once deregistered, a late `draining` is stale.
        stale = record.lifecycle == "deregistered" and lifecycle == "draining"
        if lifecycle == record.lifecycle or stale:
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
        previous_mode = record.capture_mode
        record.health = heartbeat.health_status
        record.reasons = heartbeat.reasons
        record.metrics = heartbeat.metrics
        # A draining collector has stopped collecting and says ``cycle``: not news.
        mode = record.capture_mode
        if mode is not None and mode != previous_mode and record.lifecycle != "draining":
            self._emit(
                EventKind.CAPTURE_MODE,
                collector_id,
                capture_mode=mode,
                previous=previous_mode,
            )

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
