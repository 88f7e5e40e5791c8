"""The procmond lifecycle, declared as data.

Theory of operation
-------------------
procmond has exactly one lifecycle::

    unregistered -> registering -> ready -> draining -> deregistered

Everything the daemon may do depends on where it is in that line, so the
line is written down once, here, as three tables:

``STATES``
    each state with one sentence of meaning, the wire code that refuses
    an operation the state does not accept (``INVALID_STATE`` while the
    collector is still coming up, ``SHUTTING_DOWN`` once it is leaving), and
    its :class:`Effects`: what the daemon keeps doing while in it
    (:class:`Activity`: listening, collecting, heartbeating), what it does once
    on entering or leaving it (:class:`Action`: send Register, announce, start
    the drain, send Deregister, ...), its sd_notify lines and its effect on
    health;
``TRANSITIONS``
    every allowed move as ``(trigger, sources, destination, guards)``; a
    guard is a named pure predicate over :class:`Facts`;
``ACCEPTS``
    for each state, the set of operations its mailbox admits: the wire RPCs
    of protocol section 5 as declared, and the daemon's internal ticks as
    its activities imply (a state that does not collect refuses CollectTick).

:class:`~fsm.machine.Lifecycle` builds a ``transitions`` machine from those tables
(:func:`machine_config`) and
exposes a small typed API: :meth:`Lifecycle.fire` moves the machine (or
raises :class:`InvalidTransition` and changes nothing), and
:meth:`Lifecycle.admit` / :func:`admission` answer "may this state take this
operation?" with either :data:`ACCEPTED` or a :class:`Refusal` carrying the
wire code and the list of operations the state would accept.

Like h11's state machine, this module does no I/O: it imports no asyncio,
redis, psutil or pydantic, reads no clock, and never decides anything on
its own. The daemon's actor task, its only writer, feeds it inputs with the
facts it holds at that moment (the guards read only those), and performs
what :func:`move` says the change means: actions of the state left, then
activities stopped and started, then actions of the state entered.
The diagrams, the docs' tables and the mailbox are all derived from these
tables: a transition written as code anywhere else would be invisible to
them, so there must be none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fsm.vocabulary import (
    WIRE_OPERATIONS,
    Action,
    Activity,
    Effects,
    Facts,
    HealthEffect,
    Move,
    Operation,
    RefusalCode,
    Severity,
    State,
    StateSpec,
    TransitionSpec,
    Trigger,
)


def bus_connected(facts: Facts) -> bool:
    """A registration request can only be sent over a connected bus."""
    return facts.bus_connected


def answer_is_current(facts: Facts) -> bool:
    """Only the outcome of the attempt in flight (its answer or its timeout) counts."""
    return facts.answer_is_current


INITIAL: Final = State.UNREGISTERED

_NOT_REGISTERED: Final = "not registered (state {state})"

STATES: Final[tuple[StateSpec, ...]] = (
    StateSpec(
        State.UNREGISTERED,
        "Started (or a registration attempt failed); collecting, not yet known to the agent.",
        RefusalCode.INVALID_STATE,
        Effects(
            frozenset({Activity.LISTEN, Activity.COLLECT}),
            on_enter=(Action.SCHEDULE_REGISTRATION,),
            status="unregistered: collecting, waiting to register with the agent",
            health=HealthEffect(Severity.DEGRADED, _NOT_REGISTERED),
        ),
    ),
    StateSpec(
        State.REGISTERING,
        "A Register request is in flight and its answer awaited.",
        RefusalCode.INVALID_STATE,
        Effects(
            frozenset({Activity.LISTEN, Activity.COLLECT}),
            on_enter=(Action.SEND_REGISTER,),
            on_exit=(Action.END_ATTEMPT,),
            status="registering with the agent",
            health=HealthEffect(Severity.DEGRADED, _NOT_REGISTERED),
        ),
    ),
    StateSpec(
        State.READY,
        "Accepted by the agent: collecting, heartbeating and serving every RPC.",
        RefusalCode.INVALID_STATE,
        Effects(
            frozenset({Activity.LISTEN, Activity.COLLECT, Activity.HEARTBEAT}),
            # Protocol section 7: the first heartbeat right after `ready`.
            on_enter=(Action.ANNOUNCE, Action.HEARTBEAT_NOW),
            sd_notify=("READY=1",),
            status="ready: registered, collecting and heartbeating",
            announces_interval=True,
        ),
    ),
    StateSpec(
        State.DRAINING,
        "Leaving: finishing the cycle, flushing events and the log; only HealthCheck is served.",
        RefusalCode.SHUTTING_DOWN,
        Effects(
            # Still heartbeating (protocol section 7) so the agent can watch it leave.
            frozenset({Activity.LISTEN, Activity.HEARTBEAT}),
            on_enter=(Action.ANNOUNCE, Action.START_DRAIN),
            # Protocol section 7: Deregister "on the way out of draining".
            on_exit=(Action.SEND_DEREGISTER,),
            sd_notify=("STOPPING=1",),
            status="draining: finishing the cycle and flushing events",
            health=HealthEffect(Severity.UNHEALTHY, "state is {state}"),
        ),
    ),
    StateSpec(
        State.DEREGISTERED,
        "Gone: deregistered and about to exit; nothing is served.",
        RefusalCode.SHUTTING_DOWN,
        Effects(
            frozenset(),
            on_enter=(Action.ANNOUNCE, Action.STOP),
            status="deregistered: exiting",
            health=HealthEffect(Severity.UNHEALTHY, "state is {state}"),
        ),
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
        "The attempt in flight was rejected, timed out or could not be sent; retried with backoff.",
        (answer_is_current,),
    ),
    TransitionSpec(
        Trigger.BUS_RESTORED,
        (State.READY,),
        State.REGISTERING,
        "The bus came back after a loss and is up; register again so the agent learns of us.",
        (bus_connected,),
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
        "The drain ended: events flushed and the log synced, or its timeout ran out.",
    ),
)

_LIVE_RPCS: Final = frozenset({Operation.HEALTH_CHECK, Operation.GRACEFUL_SHUTDOWN})

#: The wire operations each state serves (protocol section 5).
WIRE_ACCEPTS: Final[Mapping[State, frozenset[Operation]]] = {
    State.UNREGISTERED: _LIVE_RPCS,
    State.REGISTERING: _LIVE_RPCS,
    State.READY: _LIVE_RPCS | {Operation.UPDATE_CONFIG},
    State.DRAINING: frozenset({Operation.HEALTH_CHECK}),
    State.DEREGISTERED: frozenset(),
}

#: The tick each activity is driven by.
TICKS: Final[Mapping[Activity, Operation]] = {
    Activity.COLLECT: Operation.COLLECT_TICK,
    Activity.HEARTBEAT: Operation.HEARTBEAT_TICK,
}

_SPEC_BY_STATE: Final = {spec.state: spec for spec in STATES}

#: Everything each state admits: its wire operations and the ticks of its activities.
ACCEPTS: Final[Mapping[State, frozenset[Operation]]] = {
    state: wire | {TICKS[a] for a in _SPEC_BY_STATE[state].effects.activities if a in TICKS}
    for state, wire in WIRE_ACCEPTS.items()
}


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


def effects(state: State) -> Effects:
    """What ``state`` means for the daemon."""
    return _SPEC_BY_STATE[state].effects


def is_live(state: State) -> bool:
    """True while the daemon listens for requests (every state but the terminal one)."""
    return Activity.LISTEN in effects(state).activities


def move(old: State, new: State) -> Move:
    """The effects of going from ``old`` to ``new``: actions of the state left, activities
    stopped and started (only those that differ), then actions of the state entered."""
    before, after = effects(old), effects(new)
    return Move(
        old,
        new,
        before.on_exit,
        before.activities - after.activities,
        after.activities - before.activities,
        after.on_enter,
    )


def initial_move() -> Move:
    """Entering the initial state at start-up: its activities and its entry actions."""
    first = effects(INITIAL)
    return Move(INITIAL, INITIAL, (), frozenset(), first.activities, first.on_enter)


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
