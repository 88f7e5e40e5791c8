"""The actor's messages and what their futures resolve to.

Two kinds of message reach the actor's mailbox, and the lifecycle table
admits both:

* **operations** (:class:`fsm.Operation`): the wire RPCs, which
  :mod:`procmond.daemon.operations` builds from requests, and the daemon's
  own ticks; a state takes those its row accepts;
* **lifecycle inputs**: what the registrar, the bus and the drain report
  (a registration is due, an answer or a timeout, the bus is back, the drain
  ended). Each names the :class:`fsm.Trigger` it would fire, and a state
  takes it only when the table declares that trigger from it. Only the
  actor fires triggers (STYLE 10: one writer); everyone else sends these.

Signals and timers send messages too (STYLE: shutdown is a message in the
same mailbox).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fsm import Operation, Refusal, RefusalCode, Trigger
from procmond.errors import Refused
from procmond.schemas import RegistrationAnswer, ShutdownResult

__all__ = [
    "BusRestored",
    "CollectTick",
    "DrainFinished",
    "DrainReport",
    "GracefulShutdown",
    "HealthCheck",
    "HeartbeatTick",
    "Input",
    "Message",
    "Outcome",
    "RegisterOutcome",
    "RegistrationDue",
    "Request",
    "UpdateConfig",
    "caller_of",
    "refusal_error",
]


@dataclass(frozen=True)
class HealthCheck:
    """Ask for the health payload."""

    #: Who asked (the request's ``client_id``; None: the daemon itself or a test).
    #: The mailbox counts each caller's fair share by it (protocol section 10).
    caller: str | None = None
    operation: ClassVar[Operation] = Operation.HEALTH_CHECK


@dataclass(frozen=True)
class UpdateConfig:
    """Change the configuration at the next cycle boundary."""

    changes: Mapping[str, Any]
    validate_only: bool = False
    caller: str | None = None
    operation: ClassVar[Operation] = Operation.UPDATE_CONFIG


@dataclass(frozen=True)
class GracefulShutdown:
    """Drain and leave (fires ``shutdown_requested``)."""

    reason: str | None = None
    timeout_s: float = 30.0
    caller: str | None = None
    operation: ClassVar[Operation] = Operation.GRACEFUL_SHUTDOWN


@dataclass(frozen=True)
class CollectTick:
    """Run a collection cycle now (unless one is running)."""

    operation: ClassVar[Operation] = Operation.COLLECT_TICK


@dataclass(frozen=True)
class HeartbeatTick:
    """Send a heartbeat now."""

    operation: ClassVar[Operation] = Operation.HEARTBEAT_TICK


Request = HealthCheck | UpdateConfig | GracefulShutdown | CollectTick | HeartbeatTick


@dataclass(frozen=True)
class RegistrationDue:
    """The registrar's timer ran out and the bus was connected: try to register."""

    trigger: ClassVar[Trigger] = Trigger.START_REGISTRATION


@dataclass(frozen=True)
class RegisterOutcome:
    """The agent's answer to a Register attempt, or the attempt's failure.

    ``answer`` is None when the attempt timed out or could not be sent
    (``why`` says which). Which attempt it concerns is ``request_id``: the
    actor compares it with the attempt in flight (guard ``answer_is_current``).
    """

    request_id: str
    answer: RegistrationAnswer | None
    why: str = ""

    @property
    def accepted(self) -> bool:
        """True for an ``Accepted`` answer."""
        return self.answer is not None and self.answer.status == "Accepted"

    @property
    def trigger(self) -> Trigger:
        """``registration_accepted`` or ``registration_failed``."""
        return Trigger.REGISTRATION_ACCEPTED if self.accepted else Trigger.REGISTRATION_FAILED


@dataclass(frozen=True)
class BusRestored:
    """The bus reported Connected again after a loss."""

    trigger: ClassVar[Trigger] = Trigger.BUS_RESTORED


@dataclass
class DrainReport:
    """The outcome of a drain, for the Deregister request and the exit line."""

    reason: str
    result: ShutdownResult
    #: Events seen but never written to the log (it refused them): lost at exit.
    unlogged: int = 0


@dataclass(frozen=True)
class DrainFinished:
    """The drain ended (flushed and synced, or its timeout ran out)."""

    report: DrainReport
    trigger: ClassVar[Trigger] = Trigger.DRAIN_COMPLETE


Input = RegistrationDue | RegisterOutcome | BusRestored | DrainFinished
Message = Request | Input


@dataclass
class Outcome:
    """What a message's future resolves to: a payload or a refusal, with timings."""

    payload: dict[str, Any] | None = None
    error: Refused | None = None
    queue_ms: float = 0.0
    execution_ms: float = 0.0


def caller_of(message: Message) -> str | None:
    """The ``client_id`` a wire request came from; None for the daemon's own messages."""
    if isinstance(message, HealthCheck | UpdateConfig | GracefulShutdown):
        return message.caller
    return None


def refusal_error(refusal: Refusal) -> Refused:
    """The wire error for a lifecycle refusal (INVALID_STATE or SHUTTING_DOWN)."""
    if refusal.code is RefusalCode.SHUTTING_DOWN:
        return Refused.shutting_down(refusal.state.value, refusal.context())
    return Refused.invalid_state(refusal.context())
