"""Table-driven tests of the lifecycle declared in fsm.lifecycle (no event loop)."""

from __future__ import annotations

import itertools

import pytest

from fsm import (
    ACCEPTED,
    TRANSITIONS,
    WIRE_OPERATIONS,
    Admission,
    Facts,
    InvalidTransition,
    Lifecycle,
    Operation,
    Refusal,
    RefusalCode,
    State,
    Trigger,
    acceptance_table_markdown,
    accepted_operations,
    admission,
    is_terminal,
    target,
    transition_for,
    triggers_from,
)

# Protocol section 5, copied literally: the contract the declared ACCEPTS must meet.
PROTOCOL_SECTION_5 = """\
| operation | unregistered | registering | ready | draining | deregistered |
|---|---|---|---|---|---|
| HealthCheck | yes | yes | yes | yes | SHUTTING_DOWN |
| UpdateConfig | INVALID_STATE | INVALID_STATE | yes | SHUTTING_DOWN | SHUTTING_DOWN |
| GracefulShutdown | yes | yes | yes | SHUTTING_DOWN | SHUTTING_DOWN |
"""

# A path of triggers (happy facts) that reaches each state from the initial one.
PATH_TO: dict[State, tuple[Trigger, ...]] = {
    State.UNREGISTERED: (),
    State.REGISTERING: (Trigger.START_REGISTRATION,),
    State.READY: (Trigger.START_REGISTRATION, Trigger.REGISTRATION_ACCEPTED),
    State.DRAINING: (Trigger.SHUTDOWN_REQUESTED,),
    State.DEREGISTERED: (Trigger.SHUTDOWN_REQUESTED, Trigger.DRAIN_COMPLETE),
}

# Every declared move, written out independently of the table under test.
EXPECTED_MOVES: dict[tuple[State, Trigger], State] = {
    (State.UNREGISTERED, Trigger.START_REGISTRATION): State.REGISTERING,
    (State.UNREGISTERED, Trigger.SHUTDOWN_REQUESTED): State.DRAINING,
    (State.REGISTERING, Trigger.REGISTRATION_ACCEPTED): State.READY,
    (State.REGISTERING, Trigger.REGISTRATION_FAILED): State.UNREGISTERED,
    (State.REGISTERING, Trigger.SHUTDOWN_REQUESTED): State.DRAINING,
    (State.READY, Trigger.BUS_RESTORED): State.REGISTERING,
    (State.READY, Trigger.SHUTDOWN_REQUESTED): State.DRAINING,
    (State.DRAINING, Trigger.DRAIN_COMPLETE): State.DEREGISTERED,
}

UNDECLARED = [pair for pair in itertools.product(State, Trigger) if pair not in EXPECTED_MOVES]

# (state, trigger, facts that make its guard refuse)
GUARD_REFUSALS = [
    (State.UNREGISTERED, Trigger.START_REGISTRATION, Facts(bus_connected=False)),
    (State.REGISTERING, Trigger.REGISTRATION_ACCEPTED, Facts(answer_is_current=False)),
    (State.REGISTERING, Trigger.REGISTRATION_FAILED, Facts(answer_is_current=False)),
    (State.READY, Trigger.BUS_RESTORED, Facts(bus_connected=False)),
]


def lifecycle_in(
    state: State, listener: list[tuple[State, State, Trigger]] | None = None
) -> Lifecycle:
    """A lifecycle driven along PATH_TO[state]; moves are appended to ``listener``."""
    moves = listener if listener is not None else []
    lifecycle = Lifecycle(on_change=lambda a, b, t: moves.append((a, b, t)))
    for trigger in PATH_TO[state]:
        assert lifecycle.fire(trigger)
    assert lifecycle.state is state
    return lifecycle


def cell(verdict: Admission) -> str:
    """The acceptance-table cell for an admission verdict."""
    return verdict.code.value if isinstance(verdict, Refusal) else "yes"


def parse_table(markdown: str) -> dict[tuple[str, str], str]:
    """Cells of a Markdown acceptance table keyed by (operation, state)."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.strip().splitlines()
    ]
    header, _rule, *body = rows
    return {
        (row[0], state): cell
        for row in body
        for state, cell in zip(header[1:], row[1:], strict=True)
    }


def test_initial_state_is_unregistered() -> None:
    """A new lifecycle starts unregistered."""
    assert Lifecycle().state is State.UNREGISTERED


def test_declared_moves_are_exactly_the_expected_ones() -> None:
    """The declared table holds every expected move and no other."""
    declared = {
        (source, spec.trigger): spec.dest for spec in TRANSITIONS for source in spec.sources
    }
    assert declared == EXPECTED_MOVES


@pytest.mark.parametrize(("state", "trigger"), list(EXPECTED_MOVES))
def test_declared_trigger_moves_to_its_destination(state: State, trigger: Trigger) -> None:
    """Each declared trigger, with its guards satisfied, moves to the declared state and says so."""
    lifecycle = lifecycle_in(state)
    assert lifecycle.can_fire(trigger)
    assert lifecycle.fire(trigger, Facts()) is True
    assert lifecycle.state is EXPECTED_MOVES[state, trigger]
    assert target(state, trigger) is EXPECTED_MOVES[state, trigger]


@pytest.mark.parametrize(("state", "trigger"), UNDECLARED)
def test_undeclared_trigger_raises_and_leaves_state(state: State, trigger: Trigger) -> None:
    """An undeclared trigger raises InvalidTransition naming state and trigger; nothing changes."""
    moves: list[tuple[State, State, Trigger]] = []
    lifecycle = lifecycle_in(state, moves)
    moves.clear()
    assert not lifecycle.can_fire(trigger)
    with pytest.raises(InvalidTransition) as caught:
        lifecycle.fire(trigger)
    assert caught.value.state is state
    assert caught.value.trigger is trigger
    assert repr(state.value) in str(caught.value)
    assert repr(trigger.value) in str(caught.value)
    assert lifecycle.state is state
    assert moves == []
    assert transition_for(state, trigger) is None
    assert target(state, trigger) is None


@pytest.mark.parametrize(("state", "trigger", "facts"), GUARD_REFUSALS)
def test_false_guard_returns_false_and_leaves_state(
    state: State, trigger: Trigger, facts: Facts
) -> None:
    """A guard returning False makes fire() return False, leaves the state and calls no listener."""
    moves: list[tuple[State, State, Trigger]] = []
    lifecycle = lifecycle_in(state, moves)
    moves.clear()
    assert not lifecycle.can_fire(trigger, facts)
    assert lifecycle.fire(trigger, facts) is False
    assert lifecycle.state is state
    assert moves == []


def test_every_guard_is_exercised_by_a_refusal_case() -> None:
    """Each guard in the table has a refusal case above (the table of cases is complete)."""
    guarded = {(s, spec.trigger) for spec in TRANSITIONS if spec.guards for s in spec.sources}
    assert guarded == {(s, t) for s, t, _ in GUARD_REFUSALS}


def test_guards_ignore_unrelated_facts() -> None:
    """A transition without guards fires whatever the facts say."""
    everything_false = Facts(bus_connected=False, answer_is_current=False)
    lifecycle = lifecycle_in(State.READY)
    assert lifecycle.fire(Trigger.SHUTDOWN_REQUESTED, everything_false) is True
    assert lifecycle.state is State.DRAINING
    assert lifecycle.fire(Trigger.DRAIN_COMPLETE, everything_false) is True


def test_every_guard_can_refuse() -> None:
    """STYLE 10: a guard that never refuses is deleted; each guard says no to some facts."""
    guards = {guard for spec in TRANSITIONS for guard in spec.guards}
    assert guards
    for guard in guards:
        assert any(not guard(facts) for _s, _t, facts in GUARD_REFUSALS), guard.__name__


def test_on_change_called_once_per_move() -> None:
    """The listener is called exactly once per state change, with (before, after, trigger)."""
    moves: list[tuple[State, State, Trigger]] = []
    lifecycle = Lifecycle(on_change=lambda a, b, t: moves.append((a, b, t)))
    lifecycle.fire(Trigger.START_REGISTRATION, Facts(bus_connected=False))
    lifecycle.fire(Trigger.START_REGISTRATION)
    lifecycle.fire(Trigger.REGISTRATION_FAILED)
    lifecycle.fire(Trigger.START_REGISTRATION)
    lifecycle.fire(Trigger.REGISTRATION_ACCEPTED)
    lifecycle.fire(Trigger.SHUTDOWN_REQUESTED)
    lifecycle.fire(Trigger.DRAIN_COMPLETE)
    assert moves == [
        (State.UNREGISTERED, State.REGISTERING, Trigger.START_REGISTRATION),
        (State.REGISTERING, State.UNREGISTERED, Trigger.REGISTRATION_FAILED),
        (State.UNREGISTERED, State.REGISTERING, Trigger.START_REGISTRATION),
        (State.REGISTERING, State.READY, Trigger.REGISTRATION_ACCEPTED),
        (State.READY, State.DRAINING, Trigger.SHUTDOWN_REQUESTED),
        (State.DRAINING, State.DEREGISTERED, Trigger.DRAIN_COMPLETE),
    ]


def test_lifecycle_without_listener_still_moves() -> None:
    """A lifecycle built without on_change moves normally."""
    lifecycle = Lifecycle()
    assert lifecycle.fire(Trigger.SHUTDOWN_REQUESTED)
    assert lifecycle.state is State.DRAINING


@pytest.mark.parametrize("trigger", list(Trigger))
def test_deregistered_is_terminal(trigger: Trigger) -> None:
    """No trigger leaves deregistered: each raises and the state stays."""
    lifecycle = lifecycle_in(State.DEREGISTERED)
    with pytest.raises(InvalidTransition):
        lifecycle.fire(trigger)
    assert lifecycle.state is State.DEREGISTERED


def test_only_deregistered_is_terminal() -> None:
    """Deregistered is the one terminal state, with no triggers out; every other state has some."""
    assert [s for s in State if is_terminal(s)] == [State.DEREGISTERED]
    assert triggers_from(State.DEREGISTERED) == ()
    assert all(triggers_from(s) for s in State if s is not State.DEREGISTERED)


def test_wire_acceptance_equals_protocol_section_5() -> None:
    """admission() for the wire operations gives exactly the table of protocol section 5."""
    expected = parse_table(PROTOCOL_SECTION_5)
    actual: dict[tuple[str, str], str] = {}
    for operation, state in itertools.product(WIRE_OPERATIONS, State):
        actual[operation.value, state.value] = cell(admission(state, operation))
    assert actual == expected


def test_rendered_acceptance_table_starts_with_protocol_rows() -> None:
    """The rendered acceptance table's header and wire rows are the protocol's lines verbatim."""
    rendered = acceptance_table_markdown().splitlines()
    assert rendered[:5] == PROTOCOL_SECTION_5.splitlines()


INTERNAL_TICKS: dict[Operation, dict[State, str]] = {
    Operation.COLLECT_TICK: {
        State.UNREGISTERED: "yes",
        State.REGISTERING: "yes",
        State.READY: "yes",
        State.DRAINING: "SHUTTING_DOWN",
        State.DEREGISTERED: "SHUTTING_DOWN",
    },
    # Heartbeats only while ready or draining (protocol section 7).
    Operation.HEARTBEAT_TICK: {
        State.UNREGISTERED: "INVALID_STATE",
        State.REGISTERING: "INVALID_STATE",
        State.READY: "yes",
        State.DRAINING: "yes",
        State.DEREGISTERED: "SHUTTING_DOWN",
    },
}


@pytest.mark.parametrize(("operation", "state"), list(itertools.product(INTERNAL_TICKS, State)))
def test_internal_ticks_admission(operation: Operation, state: State) -> None:
    """Collection runs until draining; heartbeats run only while ready or draining."""
    verdict = lifecycle_in(state).admit(operation)
    assert verdict == admission(state, operation)
    assert cell(verdict) == INTERNAL_TICKS[operation][state]


def test_refusal_context_names_state_operation_and_accepted() -> None:
    """An INVALID_STATE refusal carries {state, operation, accepted}, listing wire ops only."""
    verdict = admission(State.REGISTERING, Operation.UPDATE_CONFIG)
    assert isinstance(verdict, Refusal)
    assert verdict.accepted is False
    assert admission(State.READY, Operation.UPDATE_CONFIG) is ACCEPTED
    assert verdict.code is RefusalCode.INVALID_STATE
    assert verdict.context() == {
        "state": "registering",
        "operation": "UpdateConfig",
        "accepted": ["HealthCheck", "GracefulShutdown"],
    }


def test_accepted_operations_are_in_declaration_order() -> None:
    """accepted_operations lists what a state admits in Operation order."""
    assert accepted_operations(State.READY) == tuple(Operation)
    assert accepted_operations(State.DRAINING) == (
        Operation.HEALTH_CHECK,
        Operation.HEARTBEAT_TICK,
    )
    assert accepted_operations(State.DEREGISTERED) == ()


def test_no_auto_transitions_exist() -> None:
    """The built machine has no to_<state>() shortcuts: its events are exactly the triggers."""
    lifecycle = Lifecycle()
    events = set(lifecycle._machine.events)  # private on purpose: checks the library config
    assert events == {t.value for t in Trigger}
