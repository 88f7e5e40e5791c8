"""The words the lifecycle table is written in: states, triggers, operations, effects.

:mod:`fsm.lifecycle` declares the table with these; this module holds only
the vocabulary (enumerations and frozen row types), no table and no logic.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final


class State(enum.StrEnum):
    """The five lifecycle states; the value is the wire spelling."""

    UNREGISTERED = "unregistered"
    REGISTERING = "registering"
    READY = "ready"
    DRAINING = "draining"
    DEREGISTERED = "deregistered"


class Trigger(enum.StrEnum):
    """Inputs that move the lifecycle; the value is the trigger name."""

    START_REGISTRATION = "start_registration"
    REGISTRATION_ACCEPTED = "registration_accepted"
    REGISTRATION_FAILED = "registration_failed"
    BUS_RESTORED = "bus_restored"
    SHUTDOWN_REQUESTED = "shutdown_requested"
    DRAIN_COMPLETE = "drain_complete"


class Operation(enum.StrEnum):
    """Messages the actor's mailbox may be asked to take.

    The first three are the wire RPCs of protocol section 6; the rest are
    the daemon's own periodic work, admitted by the same table so that a
    draining collector stops collecting for the same reason it refuses an
    UpdateConfig.
    """

    HEALTH_CHECK = "HealthCheck"
    UPDATE_CONFIG = "UpdateConfig"
    GRACEFUL_SHUTDOWN = "GracefulShutdown"
    COLLECT_TICK = "CollectTick"
    HEARTBEAT_TICK = "HeartbeatTick"


#: The operations an agent may send over the bus (protocol section 6).
WIRE_OPERATIONS: Final = (
    Operation.HEALTH_CHECK,
    Operation.UPDATE_CONFIG,
    Operation.GRACEFUL_SHUTDOWN,
)


class RefusalCode(enum.StrEnum):
    """Wire error codes (protocol section 4) the lifecycle can produce."""

    INVALID_STATE = "INVALID_STATE"
    SHUTTING_DOWN = "SHUTTING_DOWN"


@dataclass(frozen=True)
class Facts:
    """What the daemon knows when it fires a trigger; guards read only this.

    Each field defaults to the value under which the transition is normal,
    so ``lifecycle.fire(trigger)`` with no facts takes the happy path. The
    daemon computes every field at the moment it fires: ``bus_connected``
    from the bus's status, ``answer_is_current`` by comparing the answer's
    (or the expired timer's) request id with the Register attempt in flight.
    """

    bus_connected: bool = True
    answer_is_current: bool = True


Guard = Callable[[Facts], bool]


class Activity(enum.StrEnum):
    """What the daemon keeps doing for as long as it is in a state."""

    #: Subscribed to its request topic and to its own response topic.
    LISTEN = "listen"
    #: A collection cycle every interval (admits CollectTick).
    COLLECT = "collect"
    #: A heartbeat every interval (admits HeartbeatTick).
    HEARTBEAT = "heartbeat"


class Action(enum.StrEnum):
    """What the daemon does once, on entering or leaving a state."""

    #: Schedule the next Register attempt: at once the first time, after
    #: the backoff of protocol section 7 after a failure (or give up after
    #: the configured number of failures).
    SCHEDULE_REGISTRATION = "schedule registration"
    #: Send a Register request; its id becomes the attempt in flight.
    SEND_REGISTER = "send Register"
    #: Forget the attempt in flight: a late answer to it is stale.
    END_ATTEMPT = "end attempt"
    #: Publish the state on ``control.health.status.{collector_id}``.
    ANNOUNCE = "announce"
    #: Send a heartbeat at once (the first one right after ``ready``).
    HEARTBEAT_NOW = "heartbeat now"
    #: Finish the cycle, flush events and sync the log; answer GracefulShutdown.
    START_DRAIN = "start drain"
    #: Send Deregister (if a registration was ever accepted) and wait <= 2 s.
    SEND_DEREGISTER = "send Deregister"
    #: Let the last announcements go out (bounded), then end the actor.
    STOP = "stop"


class Severity(enum.StrEnum):
    """How a state weighs on the health verdict; the value is the wire spelling."""

    DEGRADED = "Degraded"
    UNHEALTHY = "Unhealthy"


@dataclass(frozen=True)
class HealthEffect:
    """A state's contribution to health: a severity and the reason given."""

    severity: Severity
    reason: str


@dataclass(frozen=True)
class Effects:
    """What a state means for the daemon (STYLE 9: the table drives, the code performs)."""

    activities: frozenset[Activity]
    on_enter: tuple[Action, ...] = ()
    on_exit: tuple[Action, ...] = ()
    #: sd_notify lines sent on entering, besides ``STATUS=`` + :attr:`status`.
    sd_notify: tuple[str, ...] = ()
    #: The ``STATUS=`` text for systemd.
    status: str = ""
    health: HealthEffect | None = None
    #: The announcement carries ``heartbeat_interval_ms`` (protocol section 7: ``ready``).
    announces_interval: bool = False

    @property
    def announced(self) -> bool:
        """True when entering the state is announced on the status topic."""
        return Action.ANNOUNCE in self.on_enter


@dataclass(frozen=True)
class StateSpec:
    """One row of :data:`STATES`."""

    state: State
    meaning: str
    refusal: RefusalCode
    effects: Effects
    terminal: bool = False


@dataclass(frozen=True)
class TransitionSpec:
    """One row of :data:`TRANSITIONS`."""

    trigger: Trigger
    sources: tuple[State, ...]
    dest: State
    meaning: str
    guards: tuple[Guard, ...] = field(default=())


@dataclass(frozen=True)
class Move:
    """What a change of state asks the daemon to do, in this order."""

    old: State
    new: State
    exit_actions: tuple[Action, ...]
    stop: frozenset[Activity]
    start: frozenset[Activity]
    enter_actions: tuple[Action, ...]
