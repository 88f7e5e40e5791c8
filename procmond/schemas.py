"""Wire messages of protocol version 1, as pydantic models.

With :mod:`procmond.agent.schemas`, the only module that imports pydantic.
Everything that crosses the bus is declared here: RPC envelopes, the payloads of each operation, the
registration / status / heartbeat messages and the collector configuration
(whose rules UpdateConfig, the CLI, the environment and the TOML file all
share). :mod:`procmond.daemon.rpc` turns parsed requests into actor messages. What
the reference agent reads of those messages is :mod:`procmond.agent.schemas`.

Errors::

    ConfigValidationError    an UpdateConfig (or start-up setting) is wrong;
                             carries [{field, message}] for VALIDATION_FAILED
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_serializer,
)
from pydantic_core import PydanticSerializationError

from procmond.protocol import (
    IDENTIFIER_PATTERN,
    MAX_ID_CHARS,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ErrorCategory,
    HealthStatus,
    Status,
)

Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN)]
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]


# Timestamps arrive as RFC 3339 strings: parse them even in strict models,
# but require an offset (a naive time is ambiguous).
def _rfc3339_text(value: object) -> object:
    if not isinstance(value, str | datetime):
        raise ValueError("must be an RFC 3339 timestamp string")
    return value


WireTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text), Field(strict=False)]


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``, as protocol section 1 writes it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_timestamp() -> str:
    """The current wall-clock time, formatted for the wire."""
    return format_timestamp(datetime.now(UTC))


def _escaped_json(document: dict[str, Any]) -> bytes:
    """ASCII JSON: any character, a lone surrogate too, as a ``\\u`` escape."""
    return json.dumps(document, ensure_ascii=True, separators=(",", ":")).encode()


def _utf8_text(value: object) -> str:
    """``value`` if it is a string UTF-8 can encode (no lone surrogate), else ``""``."""
    if not isinstance(value, str):
        return ""
    try:
        value.encode()
    except UnicodeEncodeError:
        return ""
    return value


class _Wire(BaseModel):
    """Base of every outgoing message: timestamps serialize the protocol's way."""

    model_config = ConfigDict(frozen=True)

    @field_serializer("*", when_used="json", check_fields=False)
    def _serialize(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return format_timestamp(value)
        return value

    def to_bytes(self) -> bytes:
        """The message as UTF-8 JSON.

        A string from a peer may hold a lone surrogate (JSON's ``"\\ud800"``
        escape decodes to one), which UTF-8 cannot encode: such a message is
        written with ``\\u`` escapes instead, so echoing a request never fails.
        """
        try:
            return self.model_dump_json().encode()
        except PydanticSerializationError:
            return _escaped_json(self.model_dump(mode="json"))


class _Strict(BaseModel):
    """Base of incoming payloads: no coercion, unknown keys refused."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# --------------------------------------------------------------------------
# Collector configuration (protocol section 6, UpdateConfig)


class CollectorConfig(_Strict):
    """The runtime-changeable configuration; defaults are the protocol's."""

    collection_interval_secs: Annotated[float, Field(ge=1, le=3600)] = 30.0
    max_events_in_flight: Annotated[int, Field(ge=1, le=100_000)] = 1000
    collect_enhanced_metadata: bool = True
    compute_executable_hashes: bool = False
    max_processes: Annotated[int, Field(ge=0, le=1_000_000)] = 0


CONFIG_FIELDS: Final = tuple(CollectorConfig.model_fields)


@dataclass(frozen=True)
class FieldError:
    """One entry of ``context.errors`` of ``VALIDATION_FAILED``."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """The wire form."""
        return {"field": self.field, "message": self.message}


class ConfigValidationError(ValueError):
    """A config update (or start-up setting) breaks the rules; nothing changed."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


def _field_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in err["loc"]) or "changes"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = f"unknown setting (known: {', '.join(CONFIG_FIELDS)})"
        errors.append(FieldError(loc, message))
    return errors


def apply_config_changes(current: CollectorConfig, changes: Mapping[str, Any]) -> CollectorConfig:
    """``current`` with ``changes`` applied, whole or not at all.

    Raises :class:`ConfigValidationError` for an empty update, unknown keys,
    wrong JSON types (no string-to-number coercion) and out-of-range values.
    """
    if not changes:
        raise ConfigValidationError([FieldError("changes", "no changes given")])
    merged = {**current.model_dump(), **changes}
    try:
        return CollectorConfig.model_validate(merged, strict=True)
    except ValidationError as exc:
        raise ConfigValidationError(_field_errors(exc)) from exc


def changed_fields(old: CollectorConfig, new: CollectorConfig) -> list[str]:
    """Names of the fields whose value differs, in declaration order."""
    return [name for name in CONFIG_FIELDS if getattr(old, name) != getattr(new, name)]


# --------------------------------------------------------------------------
# RPC envelopes (protocol section 3)


class RpcRequest(BaseModel):
    """An RPC request; unknown envelope fields are ignored for forward compatibility."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    request_id: RequestId
    client_id: Identifier
    target: str
    operation: str
    payload: dict[str, Any] | None = None
    timestamp: WireTime
    deadline: WireTime
    correlation_id: str | None = None


class RpcErrorBody(_Wire):
    """``error`` of a response."""

    code: str
    message: str
    category: ErrorCategory
    context: dict[str, Any] = Field(default_factory=dict)


class RpcResponse(_Wire):
    """An RPC response (protocol section 3)."""

    request_id: str
    correlation_id: str
    operation: str
    service_id: str
    status: Status
    payload: dict[str, Any] | None = None
    error: RpcErrorBody | None = None
    state: str
    timestamp: datetime
    queue_time_ms: float
    execution_time_ms: float
    total_time_ms: float


class OutgoingRequest(_Wire):
    """A request procmond sends (Register, Deregister) or a client sends."""

    request_id: str
    client_id: str
    target: str
    operation: str
    payload: dict[str, Any] | None
    timestamp: datetime
    deadline: datetime
    correlation_id: str | None = None

    @classmethod
    def expiring(
        cls,
        *,
        request_id: str,
        client_id: str,
        target: str,
        operation: str,
        payload: dict[str, Any] | None,
        timeout_s: float,
    ) -> OutgoingRequest:
        """A request stamped now, whose deadline is ``timeout_s`` from now."""
        now = datetime.now(UTC)
        return cls(
            request_id=request_id,
            client_id=client_id,
            target=target,
            operation=operation,
            payload=payload,
            timestamp=now,
            deadline=now + timedelta(seconds=timeout_s),
        )


# --------------------------------------------------------------------------
# Payloads procmond accepts (protocol section 6)


class HealthCheckPayload(_Strict):
    """HealthCheck takes null or ``{}``."""


class UpdateConfigPayload(_Strict):
    """UpdateConfig's payload; ``changes`` is validated by :func:`apply_config_changes`."""

    changes: dict[str, Any]
    validate_only: bool = False


class GracefulShutdownPayload(_Strict):
    """GracefulShutdown's payload."""

    reason: str | None = None
    graceful_timeout_ms: Annotated[int, Field(ge=1000, le=300_000)] = 30_000


OperationPayload = HealthCheckPayload | UpdateConfigPayload | GracefulShutdownPayload


class PayloadError(ValueError):
    """A payload breaks its operation's schema (``INVALID_REQUEST``)."""


_P = TypeVar("_P", bound=_Strict)


def parse_payload(model: type[_P], operation: str, payload: dict[str, Any] | None) -> _P:
    """Validate ``payload`` of ``operation`` against its model (procmond.daemon.operations)."""
    if payload is None and model is not UpdateConfigPayload:
        payload = {}
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise PayloadError(f"invalid {operation} payload: {details}") from exc


class RequestError(ValueError):
    """An envelope breaks the schema; ``request_id`` is whatever could be salvaged."""

    def __init__(self, message: str, request_id: str, operation: str) -> None:
        self.request_id = request_id
        self.operation = operation
        super().__init__(message)


def parse_request(document: Mapping[str, Any]) -> RpcRequest:
    """Validate a decoded request object; raise :class:`RequestError` with salvage."""
    try:
        return RpcRequest.model_validate(document)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        # Salvage only what the answer can carry: a string with a lone surrogate
        # cannot be written as UTF-8 (it is echoed as "").
        raw_id = _utf8_text(document.get("request_id"))
        raw_op = _utf8_text(document.get("operation"))
        raise RequestError(f"invalid request envelope: {details}", raw_id, raw_op) from exc


def loads_object(data: bytes) -> dict[str, Any] | None:
    """Decode a JSON object; None when the bytes are not a JSON object."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------
# Registration, status, heartbeat (protocol section 7)


class RegisterPayload(_Wire):
    """Payload of the Register request."""

    collector_id: str
    collector_type: Literal["process-monitor"] = "process-monitor"
    version: str
    capabilities: list[str]
    pid: int
    hostname: str
    boot_id: str
    heartbeat_interval_ms: int


class RegistrationAnswer(BaseModel):
    """The agent's answer payload to Register."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["Accepted", "Rejected"]
    message: str | None = None
    heartbeat_interval_ms: Annotated[int, Field(ge=1, le=86_400_000)] | None = None


class AgentResponse(BaseModel):
    """The part of an agent's RPC response that procmond reads."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    request_id: str
    status: str
    payload: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


def parse_agent_response(data: bytes) -> AgentResponse | None:
    """Decode a response from the agent, or None when it is not one."""
    document = loads_object(data)
    if document is None:
        return None
    try:
        return AgentResponse.model_validate(document)
    except ValidationError:
        return None


def parse_registration_answer(payload: dict[str, Any] | None) -> RegistrationAnswer | None:
    """Decode the agent's Register answer payload, or None when malformed."""
    try:
        return RegistrationAnswer.model_validate(payload or {})
    except ValidationError:
        return None


class DeregisterPayload(_Wire):
    """Payload of the Deregister request."""

    collector_id: str
    boot_id: str
    reason: str
    force: bool = False
    events_flushed: int
    wal_pending: int


class StatusAnnouncement(_Wire):
    """A lifecycle announcement on ``control.health.status.{collector_id}``."""

    collector_id: str
    boot_id: str
    state: str
    timestamp: datetime
    heartbeat_interval_ms: int | None = None

    def to_bytes(self) -> bytes:
        """JSON; ``heartbeat_interval_ms`` only on ``ready`` (protocol section 7)."""
        try:
            return self.model_dump_json(exclude_none=True).encode()
        except PydanticSerializationError:
            return _escaped_json(self.model_dump(mode="json", exclude_none=True))


class HeartbeatMetrics(_Wire):
    """``metrics`` of a heartbeat."""

    processes_collected: int
    events_published: int
    buffer_level_percent: float
    connection_status: str
    config_version: int


class Heartbeat(_Wire):
    """A heartbeat on ``control.health.heartbeat.{collector_id}``."""

    collector_id: str
    boot_id: str
    sequence: int
    timestamp: datetime
    state: str
    health_status: HealthStatus
    reasons: list[str]
    metrics: HeartbeatMetrics


class HealthMetrics(_Wire):
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


class HealthPayload(_Wire):
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


class UpdateConfigResult(_Wire):
    """The UpdateConfig answer payload."""

    config_version: int
    changed_fields: list[str]
    config: CollectorConfig


class ShutdownResult(_Wire):
    """The GracefulShutdown answer payload."""

    events_flushed: int
    wal_pending: int
    drain_ms: float
    complete: bool


__all__ = [
    "CONFIG_FIELDS",
    "IDENTIFIER_PATTERN",
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "AgentResponse",
    "CollectorConfig",
    "ConfigValidationError",
    "DeregisterPayload",
    "ErrorCategory",
    "FieldError",
    "GracefulShutdownPayload",
    "HealthCheckPayload",
    "HealthMetrics",
    "HealthPayload",
    "HealthStatus",
    "Heartbeat",
    "HeartbeatMetrics",
    "OperationPayload",
    "OutgoingRequest",
    "PayloadError",
    "RegisterPayload",
    "RegistrationAnswer",
    "RequestError",
    "RpcErrorBody",
    "RpcRequest",
    "RpcResponse",
    "ShutdownResult",
    "Status",
    "StatusAnnouncement",
    "UpdateConfigPayload",
    "UpdateConfigResult",
    "apply_config_changes",
    "changed_fields",
    "format_timestamp",
    "loads_object",
    "now_timestamp",
    "parse_agent_response",
    "parse_payload",
    "parse_registration_answer",
    "parse_request",
]
