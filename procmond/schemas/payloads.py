"""The payloads of the operations procmond serves (protocol section 6): what each
request carries, how it is checked, and what each answer carries.

Which model belongs to which operation is :mod:`procmond.daemon.operations`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, ValidationError

from procmond.protocol import HealthStatus
from procmond.schemas.config import CollectorConfig
from procmond.schemas.wire import Strict, Wire, error_summary

__all__ = [
    "GracefulShutdownPayload",
    "HealthCheckPayload",
    "HealthMetrics",
    "HealthPayload",
    "OperationPayload",
    "PayloadError",
    "ShutdownResult",
    "UpdateConfigPayload",
    "UpdateConfigResult",
    "parse_payload",
]


class HealthCheckPayload(Strict):
    """HealthCheck takes null or ``{}``."""


class UpdateConfigPayload(Strict):
    """UpdateConfig's payload; ``changes`` is validated by :func:`apply_config_changes`."""

    changes: dict[str, Any]
    validate_only: bool = False


class GracefulShutdownPayload(Strict):
    """GracefulShutdown's payload."""

    reason: str | None = None
    graceful_timeout_ms: Annotated[int, Field(ge=1000, le=300_000)] = 30_000


OperationPayload = HealthCheckPayload | UpdateConfigPayload | GracefulShutdownPayload


class PayloadError(ValueError):
    """A payload breaks its operation's schema (``INVALID_REQUEST``)."""


_P = TypeVar("_P", bound=Strict)


def parse_payload(model: type[_P], operation: str, payload: dict[str, Any] | None) -> _P:
    """Validate ``payload`` of ``operation`` against its model (procmond.daemon.operations)."""
    if payload is None and model is not UpdateConfigPayload:
        payload = {}
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        details = error_summary(exc, "payload")
        raise PayloadError(f"invalid {operation} payload: {details}") from exc


# --------------------------------------------------------------------------
# The answers


class HealthMetrics(Wire):
    """``metrics`` of the HealthCheck answer."""

    processes_collected: int
    events_published: int
    buffer_level_percent: float
    collection_cycles: int
    collection_errors: int
    last_cycle_ms: float | None
    wal_pending: int
    heartbeats_sent: int
    rpc_malformed_total: int
    #: Protocol section 9 (v2).
    capture_mode: Literal["kernel", "cycle"]
    kernel_events: int
    kernel_events_lost: int
    partial_events: int


class HealthPayload(Wire):
    """The HealthCheck answer payload (protocol section 6)."""

    collector_id: str
    boot_id: str
    state: str
    status: HealthStatus
    reasons: list[str]
    connection_status: str
    uptime_seconds: float
    pid: int
    hostname: str
    version: str
    config: CollectorConfig
    config_version: int
    last_collection: datetime | None
    metrics: HealthMetrics


class UpdateConfigResult(Wire):
    """The UpdateConfig answer payload."""

    config_version: int
    changed_fields: list[str]
    config: CollectorConfig


class ShutdownResult(Wire):
    """The GracefulShutdown answer payload."""

    events_flushed: int
    wal_pending: int
    drain_ms: float
    complete: bool
