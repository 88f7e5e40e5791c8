"""A running lifecycle: the ``transitions`` machine built from the table, and its errors.

:class:`Lifecycle` is what the daemon's actor owns (its only writer);
:func:`fsm.lifecycle.machine_config` is the one place the table becomes a
``transitions`` machine, so the diagrams draw the very machine that runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from transitions import Machine, MachineError

from fsm.lifecycle import Admission, admission, machine_config, transition_for, triggers_from
from fsm.vocabulary import Facts, Operation, State, Trigger

#: The facts under which every transition takes its normal path.
NORMAL: Final = Facts()


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

    def can_fire(self, trigger: Trigger, facts: Facts = NORMAL) -> bool:
        """True when ``trigger`` is declared here and its guards pass; changes nothing."""
        spec = transition_for(self.state, trigger)
        return spec is not None and all(guard(facts) for guard in spec.guards)

    def fire(self, trigger: Trigger, facts: Facts = NORMAL) -> bool:
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
