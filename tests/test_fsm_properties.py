"""Hypothesis properties of the lifecycle: every input in every state, random sequences,
and a rule-based comparison against an independent model written here."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from protocol_tables import SECTION_5

from fsm import (
    Facts,
    InvalidTransition,
    Lifecycle,
    Operation,
    Refusal,
    State,
    Trigger,
    admission,
    transition_for,
)

# A path of triggers (happy facts) that reaches each state from the initial one.
PATH_TO: dict[State, tuple[Trigger, ...]] = {
    State.UNREGISTERED: (),
    State.REGISTERING: (Trigger.START_REGISTRATION,),
    State.READY: (Trigger.START_REGISTRATION, Trigger.REGISTRATION_ACCEPTED),
    State.DRAINING: (Trigger.SHUTDOWN_REQUESTED,),
    State.DEREGISTERED: (Trigger.SHUTDOWN_REQUESTED, Trigger.DRAIN_COMPLETE),
}

# The independent model: plain strings, written from protocol sections 5 and 7,
# not from fsm.lifecycle. (state, trigger) -> (destination, guard fact or None).
MODEL_MOVES: dict[tuple[str, str], tuple[str, str | None]] = {
    ("unregistered", "start_registration"): ("registering", "bus_connected"),
    ("unregistered", "shutdown_requested"): ("draining", None),
    ("registering", "registration_accepted"): ("ready", "answer_is_current"),
    ("registering", "registration_failed"): ("unregistered", "answer_is_current"),
    ("registering", "shutdown_requested"): ("draining", None),
    ("ready", "bus_restored"): ("registering", "bus_connected"),
    ("ready", "shutdown_requested"): ("draining", None),
    ("draining", "drain_complete"): ("deregistered", None),
}

# operation -> state -> "yes" or refusal code (protocol section 5, plus the ticks).
MODEL_ACCEPTS: dict[str, dict[str, str]] = {
    **SECTION_5,
    "CollectTick": {
        "unregistered": "yes",
        "registering": "yes",
        "ready": "yes",
        "draining": "SHUTTING_DOWN",
        "deregistered": "SHUTTING_DOWN",
    },
    "HeartbeatTick": {
        "unregistered": "INVALID_STATE",
        "registering": "INVALID_STATE",
        "ready": "yes",
        "draining": "yes",
        "deregistered": "SHUTTING_DOWN",
    },
}

states = st.sampled_from(State)
triggers = st.sampled_from(Trigger)
facts = st.builds(Facts, st.booleans(), st.booleans())
steps = st.lists(st.tuples(triggers, facts), max_size=40)


def lifecycle_in(state: State) -> Lifecycle:
    """A lifecycle driven along PATH_TO[state]."""
    lifecycle = Lifecycle()
    for trigger in PATH_TO[state]:
        lifecycle.fire(trigger)
    assert lifecycle.state is state
    return lifecycle


def guards_pass(state: State, trigger: Trigger, given_facts: Facts) -> bool:
    """Whether every guard of the declared move holds for ``given_facts``."""
    spec = transition_for(state, trigger)
    assert spec is not None
    return all(guard(given_facts) for guard in spec.guards)


def fire(lifecycle: Lifecycle, trigger: Trigger, given_facts: Facts) -> bool | None:
    """fire(), with None standing for InvalidTransition (after checking nothing moved)."""
    before = lifecycle.state
    try:
        return lifecycle.fire(trigger, given_facts)
    except InvalidTransition as exc:
        refused = exc
    assert (refused.state, refused.trigger) == (before, trigger)
    assert lifecycle.state is before
    return None


@given(state=states, trigger=triggers, given_facts=facts)
def test_every_trigger_in_every_state(state: State, trigger: Trigger, given_facts: Facts) -> None:
    """Every (state, trigger) either takes the declared move (guards permitting) or raises
    InvalidTransition with the state unchanged."""
    lifecycle = lifecycle_in(state)
    spec = transition_for(state, trigger)
    result = fire(lifecycle, trigger, given_facts)
    if spec is None:
        assert result is None
    elif guards_pass(state, trigger, given_facts):
        assert result is True
        assert lifecycle.state is spec.dest
    else:
        assert result is False
        assert lifecycle.state is state


@given(steps=steps)
def test_random_sequences_keep_the_lifecycle_invariants(
    steps: list[tuple[Trigger, Facts]],
) -> None:
    """Along any sequence: the state is one of the five, deregistered absorbs, ready is entered
    only from registering, draining only via shutdown_requested, and every move is reported once."""
    moves: list[tuple[State, State, Trigger]] = []
    lifecycle = Lifecycle(on_change=lambda a, b, t: moves.append((a, b, t)))
    moved = 0
    for trigger, given_facts in steps:
        before = lifecycle.state
        result = fire(lifecycle, trigger, given_facts)
        after = lifecycle.state
        assert after in set(State)
        assert (result is True) == (after is not before)
        moved += result is True
        if before is State.DEREGISTERED:
            assert after is State.DEREGISTERED
        if after is State.READY and before is not State.READY:
            assert before is State.REGISTERING
        if after is State.DRAINING and before is not State.DRAINING:
            assert trigger is Trigger.SHUTDOWN_REQUESTED
    assert len(moves) == moved
    assert all(a is not b for a, b, _ in moves)


@given(prefix=steps, middle=steps, suffix=steps, shutdown_facts=facts)
def test_shutdown_then_finished_drain_ends_deregistered(
    prefix: list[tuple[Trigger, Facts]],
    middle: list[tuple[Trigger, Facts]],
    suffix: list[tuple[Trigger, Facts]],
    shutdown_facts: Facts,
) -> None:
    """A sequence containing shutdown_requested and later drain_complete
    ends in deregistered, whatever comes before, between and after."""
    lifecycle = Lifecycle()
    sequence = [
        *prefix,
        (Trigger.SHUTDOWN_REQUESTED, shutdown_facts),
        *middle,
        (Trigger.DRAIN_COMPLETE, Facts()),
        *suffix,
    ]
    for trigger, given_facts in sequence:
        fire(lifecycle, trigger, given_facts)
    assert lifecycle.state is State.DEREGISTERED


def verdict_cell(state: State, operation: Operation) -> str:
    verdict = admission(state, operation)
    return verdict.code.value if isinstance(verdict, Refusal) else "yes"


class LifecycleAgainstModel(RuleBasedStateMachine):
    """Drives a Lifecycle and the dict model side by side; they must never disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[tuple[State, State, Trigger]] = []
        self.lifecycle = Lifecycle(on_change=lambda a, b, t: self.moves.append((a, b, t)))
        self.model_state = "unregistered"
        self.model_moves = 0
        self.ever_deregistered = False

    def model_step(self, trigger: Trigger, given_facts: Facts) -> bool | None:
        """What the model says fire() returns (None: InvalidTransition); updates the model."""
        move = MODEL_MOVES.get((self.model_state, trigger.value))
        if move is None:
            return None
        dest, guard = move
        if guard is not None and not getattr(given_facts, guard):
            return False
        self.model_state = dest
        self.model_moves += 1
        return True

    @rule(trigger=triggers, given_facts=facts)
    def fire_any(self, trigger: Trigger, given_facts: Facts) -> None:
        """Fire an arbitrary trigger with arbitrary facts."""
        expected = self.model_step(trigger, given_facts)
        assert fire(self.lifecycle, trigger, given_facts) == expected

    @precondition(lambda self: self.model_state != "deregistered")
    @rule(trigger=triggers, given_facts=facts)
    def fire_declared(self, trigger: Trigger, given_facts: Facts) -> None:
        """Fire a trigger the model declares from here (so runs get past the early states)."""
        declared = [t for (s, t) in MODEL_MOVES if s == self.model_state]
        chosen = Trigger(declared[list(Trigger).index(trigger) % len(declared)])
        expected = self.model_step(chosen, given_facts)
        assert fire(self.lifecycle, chosen, given_facts) == expected

    @rule(trigger=triggers, given_facts=facts)
    def ask_can_fire(self, trigger: Trigger, given_facts: Facts) -> None:
        """can_fire agrees with the model and changes nothing."""
        move = MODEL_MOVES.get((self.model_state, trigger.value))
        expected = move is not None and (move[1] is None or getattr(given_facts, move[1]))
        before = self.lifecycle.state
        assert self.lifecycle.can_fire(trigger, given_facts) is expected
        assert self.lifecycle.state is before

    @invariant()
    def same_state(self) -> None:
        """The machine is where the model is."""
        assert self.lifecycle.state.value == self.model_state

    @invariant()
    def same_acceptance(self) -> None:
        """The current state admits what the model says, for every operation."""
        for operation in Operation:
            expected = MODEL_ACCEPTS[operation.value][self.model_state]
            assert verdict_cell(self.lifecycle.state, operation) == expected
            admitted = self.lifecycle.admit(operation)
            assert (not isinstance(admitted, Refusal)) == (expected == "yes")

    @invariant()
    def one_report_per_move(self) -> None:
        """The listener saw exactly the moves the model made."""
        assert len(self.moves) == self.model_moves

    @invariant()
    def deregistered_absorbs(self) -> None:
        """Once deregistered, always deregistered."""
        if self.ever_deregistered:
            assert self.lifecycle.state is State.DEREGISTERED
        self.ever_deregistered = self.lifecycle.state is State.DEREGISTERED


TestLifecycleAgainstModel = LifecycleAgainstModel.TestCase
