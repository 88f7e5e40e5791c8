"""The one registry of the operations procmond serves, keyed by :class:`fsm.Operation`.

Each wire operation of protocol section 6 is declared once: the payload model
it is validated with, the actor message it becomes, the capability it is
announced as in ``Register``, and how long its answer may take. The RPC
service, the registration payload and the tests read this table; fsm's
``WIRE_OPERATIONS`` names the same keys (a test checks the two agree).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fsm import Operation
from procmond.daemon.messages import GracefulShutdown, HealthCheck, Request, UpdateConfig
from procmond.schemas import (
    GracefulShutdownPayload,
    HealthCheckPayload,
    OperationPayload,
    PayloadError,
    UpdateConfigPayload,
    parse_payload,
)

__all__ = [
    "CAPABILITIES",
    "EXECUTION_LIMIT_S",
    "OPERATIONS",
    "SERVED_OPERATIONS",
    "SHUTDOWN_ANSWER_MARGIN_S",
    "OperationSpec",
    "PayloadError",
    "spec_for",
]

#: Protocol section 4: any operation but GracefulShutdown times out after 30 s.
EXECUTION_LIMIT_S: Final = 30.0
#: GracefulShutdown answers within its own timeout; allow for the final sync.
SHUTDOWN_ANSWER_MARGIN_S: Final = 5.0


@dataclass(frozen=True)
class OperationSpec:
    """One served operation."""

    operation: Operation
    payload: type[OperationPayload]
    message: Callable[[Any], Request]
    capability: str
    #: Seconds the answer may take at most (before the caller's deadline applies).
    limit_s: Callable[[Request], float]

    def decode(self, payload: dict[str, Any] | None) -> Request:
        """The actor message; :class:`PayloadError` when the payload breaks the schema."""
        return self.message(parse_payload(self.payload, self.operation.value, payload))


def _shutdown_limit(message: Request) -> float:
    assert isinstance(message, GracefulShutdown)
    return message.timeout_s + SHUTDOWN_ANSWER_MARGIN_S


def _fixed_limit(message: Request) -> float:
    return EXECUTION_LIMIT_S


OPERATIONS: Final[Mapping[Operation, OperationSpec]] = {
    Operation.HEALTH_CHECK: OperationSpec(
        Operation.HEALTH_CHECK,
        HealthCheckPayload,
        lambda payload: HealthCheck(),
        "health-check",
        _fixed_limit,
    ),
    Operation.UPDATE_CONFIG: OperationSpec(
        Operation.UPDATE_CONFIG,
        UpdateConfigPayload,
        lambda payload: UpdateConfig(payload.changes, payload.validate_only),
        "update-config",
        _fixed_limit,
    ),
    Operation.GRACEFUL_SHUTDOWN: OperationSpec(
        Operation.GRACEFUL_SHUTDOWN,
        GracefulShutdownPayload,
        lambda payload: GracefulShutdown(payload.reason, payload.graceful_timeout_ms / 1000),
        "graceful-shutdown",
        _shutdown_limit,
    ),
}

#: The wire names, in declaration order (``UNSUPPORTED_OPERATION``'s ``supported``).
SERVED_OPERATIONS: Final = tuple(op.value for op in OPERATIONS)
#: What ``Register`` announces (protocol section 7).
CAPABILITIES: Final = ("process-events", *(spec.capability for spec in OPERATIONS.values()))

_BY_NAME: Final = {op.value: spec for op, spec in OPERATIONS.items()}


def spec_for(operation: str) -> OperationSpec | None:
    """The spec of a served operation by its wire name; None when not served."""
    return _BY_NAME.get(operation)
