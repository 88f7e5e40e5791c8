"""The actor's messages and what their futures resolve to.

Every message names the :class:`fsm.Operation` the lifecycle admits it by;
:mod:`procmond.daemon.rpc` turns wire requests into these, and signals and timers
send them too (STYLE: shutdown is a message in the same mailbox).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fsm import Operation, Refusal, RefusalCode
from procmond.errors import Refused

__all__ = [
    "CollectTick",
    "GracefulShutdown",
    "HealthCheck",
    "Message",
    "Outcome",
    "UpdateConfig",
    "refusal_error",
]


@dataclass(frozen=True)
class HealthCheck:
    """Ask for the health payload."""

    operation: ClassVar[Operation] = Operation.HEALTH_CHECK


@dataclass(frozen=True)
class UpdateConfig:
    """Change the configuration at the next cycle boundary."""

    changes: Mapping[str, Any]
    validate_only: bool = False
    operation: ClassVar[Operation] = Operation.UPDATE_CONFIG


@dataclass(frozen=True)
class GracefulShutdown:
    """Drain and leave."""

    reason: str | None = None
    timeout_s: float = 30.0
    operation: ClassVar[Operation] = Operation.GRACEFUL_SHUTDOWN


@dataclass(frozen=True)
class CollectTick:
    """Run a collection cycle now (unless one is running)."""

    operation: ClassVar[Operation] = Operation.COLLECT_TICK


Message = HealthCheck | UpdateConfig | GracefulShutdown | CollectTick


@dataclass
class Outcome:
    """What a message's future resolves to: a payload or a refusal, with timings."""

    payload: dict[str, Any] | None = None
    error: Refused | None = None
    queue_ms: float = 0.0
    execution_ms: float = 0.0


def refusal_error(refusal: Refusal) -> Refused:
    """The wire error for a lifecycle refusal (INVALID_STATE or SHUTTING_DOWN)."""
    if refusal.code is RefusalCode.SHUTTING_DOWN:
        return Refused.shutting_down(refusal.state.value, refusal.context())
    return Refused.invalid_state(refusal.context())
