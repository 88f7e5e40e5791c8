"""Wire messages of protocol version 1, as pydantic models.

With :mod:`procmond.agent.schemas`, this package is the only place that
imports pydantic. Everything that crosses the bus is declared here: RPC
envelopes, the payloads of each operation, the registration / status /
heartbeat messages and the collector configuration (whose rules UpdateConfig,
the CLI, the environment and the TOML file all share).
:mod:`procmond.daemon.rpc` turns parsed requests into actor messages. What the
reference agent reads of those messages is :mod:`procmond.agent.schemas`.

The package re-exports every name; by responsibility they live in
:mod:`~procmond.schemas.wire` (base classes, identifier and timestamp types,
JSON helpers), :mod:`~procmond.schemas.config` (the collector configuration,
protocol section 6), :mod:`~procmond.schemas.envelopes` (RPC envelopes,
section 3), :mod:`~procmond.schemas.payloads` (each operation's payload and
answer, section 6) and :mod:`~procmond.schemas.messages` (registration, status
and heartbeat, section 7).

Errors::

    ConfigValidationError    an UpdateConfig (or start-up setting) is wrong;
                             carries [{field, message}] for VALIDATION_FAILED
"""

from __future__ import annotations

from procmond.protocol import (
    IDENTIFIER_PATTERN,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ErrorCategory,
    HealthStatus,
    Status,
)
from procmond.protocol import MAX_ID_CHARS as MAX_ID_CHARS
from procmond.schemas.config import (
    CONFIG_FIELDS,
    CollectorConfig,
    ConfigValidationError,
    FieldError,
    apply_config_changes,
    changed_fields,
)
from procmond.schemas.envelopes import (
    OutgoingRequest,
    RequestError,
    RpcErrorBody,
    RpcRequest,
    RpcResponse,
    parse_request,
)
from procmond.schemas.messages import (
    AgentResponse,
    DeregisterPayload,
    Heartbeat,
    HeartbeatMetrics,
    RegisterPayload,
    RegistrationAnswer,
    StatusAnnouncement,
    parse_agent_response,
    parse_registration_answer,
)
from procmond.schemas.payloads import (
    GracefulShutdownPayload,
    HealthCheckPayload,
    HealthMetrics,
    HealthPayload,
    OperationPayload,
    PayloadError,
    ShutdownResult,
    UpdateConfigPayload,
    UpdateConfigResult,
    parse_payload,
)
from procmond.schemas.wire import Identifier as Identifier
from procmond.schemas.wire import RequestId as RequestId
from procmond.schemas.wire import WireTime as WireTime
from procmond.schemas.wire import format_timestamp, loads_object, now_timestamp

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
