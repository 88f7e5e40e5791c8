"""The procmond lifecycle, declared as data.

Theory of operation
-------------------
procmond has exactly one lifecycle::

    unregistered -> registering -> ready -> draining -> deregistered

Everything the daemon may do depends on where it is in that line, so the
line is written down once, here, as three tables:

``STATES``
    each state with one sentence of meaning and the wire code that refuses
    an operation the state does not accept (``INVALID_STATE`` while the
    collector is still coming up, ``SHUTTING_DOWN`` once it is leaving);
``TRANSITIONS``
    every allowed move as ``(trigger, sources, destination, guards)``; a
    guard is a named pure predicate over :class:`Facts`;
``ACCEPTS``
    for each state, the set of operations (the wire RPCs of protocol
    section 5 and the daemon's internal ticks) its mailbox admits.

:class:`Lifecycle` builds a ``transitions`` machine from those tables and
exposes a small typed API: :meth:`Lifecycle.fire` moves the machine (or
raises :class:`InvalidTransition` and changes nothing), and
:meth:`Lifecycle.admit` / :func:`admission` answer "may this state take this
operation?" with either :data:`ACCEPTED` or a :class:`Refusal` carrying the
wire code and the list of operations the state would accept.

Like h11's state machine, this module does no I/O: it imports no asyncio,
redis, psutil or pydantic, reads no clock, and never decides anything on
its own. The daemon feeds it inputs and performs what the new state means.
The diagrams, the docs' tables and the mailbox are all derived from these
tables: a transition written as code anywhere else would be invisible to
them, so there must be none.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from transitions import Machine, MachineError


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
    so ``lifecycle.fire(trigger)`` with no facts takes the happy path.
    """

    bus_connected: bool = True
    answer_is_current: bool = True
    drain_finished: bool = True


Guard = Callable[[Facts], bool]


def bus_connected(facts: Facts) -> bool:
    """A registration request can only be sent over a connected bus."""
    return facts.bus_connected


def answer_is_current(facts: Facts) -> bool:
    """Only the answer to the attempt in flight may complete registration."""
    return facts.answer_is_current


def drain_finished(facts: Facts) -> bool:
    """Deregistration waits until events are flushed or the timeout ran out."""
    return facts.drain_finished


@dataclass(frozen=True)
class StateSpec:
    """One row of :data:`STATES`."""

    state: State
    meaning: str
    refusal: RefusalCode
    terminal: bool = False


@dataclass(frozen=True)
class TransitionSpec:
    """One row of :data:`TRANSITIONS`."""

    trigger: Trigger
    sources: tuple[State, ...]
    dest: State
    meaning: str
    guards: tuple[Guard, ...] = field(default=())


INITIAL: Final = State.UNREGISTERED

STATES: Final[tuple[StateSpec, ...]] = (
    StateSpec(
        State.UNREGISTERED,
        "Started (or a registration attempt failed); collecting, not yet known to the agent.",
        RefusalCode.INVALID_STATE,
    ),
    StateSpec(
        State.REGISTERING,
        "A Register request is in flight and its answer awaited.",
        RefusalCode.INVALID_STATE,
    ),
    StateSpec(
        State.READY,
        "Accepted by the agent: collecting, heartbeating and serving every RPC.",
        RefusalCode.INVALID_STATE,
    ),
    StateSpec(
        State.DRAINING,
        "Leaving: finishing the cycle, flushing events and the log; only HealthCheck is served.",
        RefusalCode.SHUTTING_DOWN,
    ),
    StateSpec(
        State.DEREGISTERED,
        "Gone: deregistered and about to exit; nothing is served.",
        RefusalCode.SHUTTING_DOWN,
        terminal=True,
    ),
)

_LIVE: Final = (State.UNREGISTERED, State.REGISTERING, State.READY)

TRANSITIONS: Final[tuple[TransitionSpec, ...]] = (
    TransitionSpec(
        Trigger.START_REGISTRATION,
        (State.UNREGISTERED,),
        State.REGISTERING,
        "A Register request is sent; only possible while the bus is connected.",
        (bus_connected,),
    ),
    TransitionSpec(
        Trigger.REGISTRATION_ACCEPTED,
        (State.REGISTERING,),
        State.READY,
        "The agent answered Accepted to the attempt in flight; `ready` is announced.",
        (answer_is_current,),
    ),
    TransitionSpec(
        Trigger.REGISTRATION_FAILED,
        (State.REGISTERING,),
        State.UNREGISTERED,
        "The attempt was rejected, timed out or could not be sent; it is retried with backoff.",
    ),
    TransitionSpec(
        Trigger.BUS_RESTORED,
        (State.READY,),
        State.REGISTERING,
        "The bus came back after a loss; register again so the agent learns of us.",
    ),
    TransitionSpec(
        Trigger.SHUTDOWN_REQUESTED,
        _LIVE,
        State.DRAINING,
        "GracefulShutdown, SIGTERM or SIGINT; `draining` is announced.",
    ),
    TransitionSpec(
        Trigger.DRAIN_COMPLETE,
        (State.DRAINING,),
        State.DEREGISTERED,
        "Events flushed and the log synced (or the drain timeout ran out); deregister and exit.",
        (drain_finished,),
    ),
)

_EVERY_LIVE_OP: Final = frozenset(
    {
        Operation.HEALTH_CHECK,
        Operation.GRACEFUL_SHUTDOWN,
        Operation.COLLECT_TICK,
    }
)

ACCEPTS: Final[Mapping[State, frozenset[Operation]]] = {
    State.UNREGISTERED: _EVERY_LIVE_OP,
    State.REGISTERING: _EVERY_LIVE_OP,
    State.READY: _EVERY_LIVE_OP | {Operation.UPDATE_CONFIG, Operation.HEARTBEAT_TICK},
    # A draining collector still answers health checks and keeps heartbeating
    # (protocol section 7) so the agent can watch it leave; it collects no more.
    State.DRAINING: frozenset({Operation.HEALTH_CHECK, Operation.HEARTBEAT_TICK}),
    State.DEREGISTERED: frozenset(),
}

_SPEC_BY_STATE: Final = {spec.state: spec for spec in STATES}


class LifecycleError(Exception):
    """Base of the lifecycle's errors.

    Hierarchy::

        LifecycleError
        └── InvalidTransition   trigger not declared from the current state
    """


class InvalidTransition(LifecycleError):  # noqa: N818 - names the refused input, as h11's errors do
    """A trigger was fired in a state that declares no move for it.

    The machine is left exactly as it was.
    """

    def __init__(self, state: State, trigger: Trigger) -> None:
        self.state = state
        self.trigger = trigger
        allowed = ", ".join(t.value for t in triggers_from(state)) or "none"
        super().__init__(
            f"trigger {trigger.value!r} is not allowed in state {state.value!r} "
            f"(allowed: {allowed})"
        )


@dataclass(frozen=True)
class Accepted:
    """The state admits the operation."""

    accepted: bool = field(default=True, init=False)


@dataclass(frozen=True)
class Refusal:
    """The state refuses the operation; carries what the wire error needs."""

    state: State
    operation: Operation
    code: RefusalCode
    accepts: tuple[Operation, ...]
    accepted: bool = field(default=False, init=False)

    def context(self) -> dict[str, Any]:
        """The ``error.context`` object of protocol section 4 for ``INVALID_STATE``.

        ``accepted`` lists only wire operations: the internal ticks mean
        nothing to an agent.
        """
        return {
            "state": self.state.value,
            "operation": self.operation.value,
            "accepted": [op.value for op in self.accepts if op in WIRE_OPERATIONS],
        }


ACCEPTED: Final = Accepted()
Admission = Accepted | Refusal


def _ordered(ops: Iterable[Operation]) -> tuple[Operation, ...]:
    order = list(Operation)
    return tuple(sorted(ops, key=order.index))


def accepted_operations(state: State) -> tuple[Operation, ...]:
    """The operations ``state`` admits, in declaration order."""
    return _ordered(ACCEPTS[state])


def admission(state: State, operation: Operation) -> Admission:
    """Whether ``state`` admits ``operation``: :data:`ACCEPTED` or a :class:`Refusal`."""
    if operation in ACCEPTS[state]:
        return ACCEPTED
    return Refusal(
        state=state,
        operation=operation,
        code=_SPEC_BY_STATE[state].refusal,
        accepts=accepted_operations(state),
    )


def triggers_from(state: State) -> tuple[Trigger, ...]:
    """Triggers declared from ``state`` (guards not evaluated), in table order."""
    return tuple(spec.trigger for spec in TRANSITIONS if state in spec.sources)


def transition_for(state: State, trigger: Trigger) -> TransitionSpec | None:
    """The declared move for ``trigger`` from ``state``, or None."""
    for spec in TRANSITIONS:
        if spec.trigger is trigger and state in spec.sources:
            return spec
    return None


def target(state: State, trigger: Trigger) -> State | None:
    """Where ``trigger`` leads from ``state`` if its guards pass, or None."""
    spec = transition_for(state, trigger)
    return None if spec is None else spec.dest


def is_terminal(state: State) -> bool:
    """True for the absorbing state(s)."""
    return _SPEC_BY_STATE[state].terminal


def machine_config() -> dict[str, Any]:
    """Keyword arguments for a ``transitions`` machine built from the tables.

    Used by :class:`Lifecycle` and by the diagram renderer, so the drawing is
    of the very machine that runs.
    """
    return {
        "states": [spec.state.value for spec in STATES],
        "transitions": [
            {
                "trigger": spec.trigger.value,
                "source": [s.value for s in spec.sources],
                "dest": spec.dest.value,
                "conditions": list(spec.guards),
            }
            for spec in TRANSITIONS
        ],
        "initial": INITIAL.value,
        # Without this every state grows a to_<state>() trigger that skips all
        # guards (LIBRARY-NOTES: transitions).
        "auto_transitions": False,
        "ignore_invalid_triggers": False,
    }


class _Model:
    """The object ``transitions`` decorates; kept private so its generated
    string-named methods never become part of our API."""

    state: str


StateListener = Callable[[State, State, Trigger], None]


class Lifecycle:
    """A running instance of the lifecycle.

    Not thread-safe (LIBRARY-NOTES: plain ``Machine`` loses updates under
    threads): the daemon's actor task is its only owner.
    """

    def __init__(self, on_change: StateListener | None = None) -> None:
        self._model = _Model()
        self._machine = Machine(model=self._model, **machine_config())
        self._on_change = on_change

    @property
    def state(self) -> State:
        """The current state."""
        return State(self._model.state)

    def can_fire(self, trigger: Trigger, facts: Facts = Facts()) -> bool:
        """True when ``trigger`` is declared here and its guards pass; changes nothing."""
        spec = transition_for(self.state, trigger)
        return spec is not None and all(guard(facts) for guard in spec.guards)

    def fire(self, trigger: Trigger, facts: Facts = Facts()) -> bool:
        """Move the machine.

        Returns True when the state changed, False when a guard refused (the
        state is unchanged). Raises :class:`InvalidTransition` when the
        trigger is not declared from the current state.
        """
        before = self.state
        if transition_for(before, trigger) is None:
            raise InvalidTransition(before, trigger)
        try:
            moved = bool(self._machine.events[trigger.value].trigger(self._model, facts))
        except MachineError as exc:  # pragma: no cover - checked just above
            raise InvalidTransition(before, trigger) from exc
        if moved and self._on_change is not None:
            self._on_change(before, self.state, trigger)
        return moved

    def admit(self, operation: Operation) -> Admission:
        """Whether the current state admits ``operation``."""
        return admission(self.state, operation)
