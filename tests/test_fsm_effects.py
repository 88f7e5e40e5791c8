"""The effects each state declares, checked against the protocol and against fsm.move()."""

from __future__ import annotations

import itertools

import pytest

from fsm import (
    ACCEPTS,
    INITIAL,
    STATES,
    TICKS,
    TRANSITIONS,
    Action,
    Activity,
    Operation,
    State,
    effects,
    initial_move,
    is_live,
    move,
)

# Protocol section 7, written out: heartbeats "while ready or draining"; the states
# announced on the status topic; section 6: health Unhealthy when draining or gone,
# Degraded when not registered.
HEARTBEATING = {State.READY, State.DRAINING}
ANNOUNCED = {State.READY, State.DRAINING, State.DEREGISTERED}
UNHEALTHY = {State.DRAINING, State.DEREGISTERED}
DEGRADED = {State.UNREGISTERED, State.REGISTERING}


def test_heartbeats_only_while_ready_or_draining() -> None:
    """The heartbeat activity runs exactly in the states protocol section 7 names."""
    assert {s for s in State if Activity.HEARTBEAT in effects(s).activities} == HEARTBEATING


def test_collection_stops_when_leaving_begins() -> None:
    """Cycles run in every state before draining and in none from it on."""
    collecting = {s for s in State if Activity.COLLECT in effects(s).activities}
    assert collecting == {State.UNREGISTERED, State.REGISTERING, State.READY}


def test_announced_states_are_the_protocol_ones() -> None:
    """ready, draining and deregistered are announced (and nothing else)."""
    assert {s for s in State if effects(s).announced} == ANNOUNCED


def test_listening_in_every_live_state() -> None:
    """The collector listens for requests in every state but the terminal one."""
    assert {s for s in State if is_live(s)} == set(State) - {State.DEREGISTERED}


def test_health_effect_of_each_state() -> None:
    """The state's weight on health is protocol section 6's."""
    for state in State:
        health = effects(state).health
        severity = None if health is None else health.severity.value
        expected = "Unhealthy" if state in UNHEALTHY else "Degraded" if state in DEGRADED else None
        assert severity == expected, state


def test_ticks_are_admitted_by_the_activities() -> None:
    """CollectTick and HeartbeatTick are admitted exactly where their activity runs."""
    for state, (activity, tick) in itertools.product(State, TICKS.items()):
        assert (tick in ACCEPTS[state]) == (activity in effects(state).activities)
    assert set(TICKS.values()) == {Operation.COLLECT_TICK, Operation.HEARTBEAT_TICK}


def test_every_state_says_what_systemd_sees() -> None:
    """Each state has a STATUS= text; READY=1 on ready and STOPPING=1 on draining only."""
    for spec in STATES:
        assert spec.effects.status
    assert {s for s in State if "READY=1" in effects(s).sd_notify} == {State.READY}
    assert {s for s in State if "STOPPING=1" in effects(s).sd_notify} == {State.DRAINING}


@pytest.mark.parametrize(
    ("old", "new"),
    [(source, spec.dest) for spec in TRANSITIONS for source in spec.sources],
)
def test_move_performs_exit_activities_entry_in_order(old: State, new: State) -> None:
    """A declared move: the old row's exit actions, the activities that differ, the new row's
    entry actions; an activity both states share is neither stopped nor restarted."""
    change = move(old, new)
    assert change.exit_actions == effects(old).on_exit
    assert change.enter_actions == effects(new).on_enter
    assert change.stop == effects(old).activities - effects(new).activities
    assert change.start == effects(new).activities - effects(old).activities
    assert not (change.stop & change.start)


def test_registration_actions() -> None:
    """Entering registering sends Register; leaving it ends the attempt; entering
    unregistered schedules the next one; draining deregisters on the way out."""
    assert Action.SEND_REGISTER in effects(State.REGISTERING).on_enter
    assert Action.END_ATTEMPT in effects(State.REGISTERING).on_exit
    assert Action.SCHEDULE_REGISTRATION in effects(State.UNREGISTERED).on_enter
    assert Action.START_DRAIN in effects(State.DRAINING).on_enter
    assert Action.SEND_DEREGISTER in effects(State.DRAINING).on_exit
    assert effects(State.DEREGISTERED).on_enter[-1] is Action.STOP


def test_initial_move_starts_listening_first() -> None:
    """At start-up the initial state's activities start (listen among them) and its entry
    actions run; Activity's declaration order puts listen first (subscribed before Register)."""
    change = initial_move()
    assert change.new is INITIAL
    assert change.start == effects(INITIAL).activities
    assert Activity.LISTEN in change.start
    assert next(iter(Activity)) is Activity.LISTEN
    assert change.enter_actions == effects(INITIAL).on_enter
