"""The enumerations and limits of the wire contract (``shared/protocol.md``, version 2).

One name for one thing: the response status, the error categories and codes,
the health verdict, the connection status and the protocol's numeric limits
are declared here once, and the errors, the health rules, the schemas and the
operator tools all use these. The module imports only the standard library,
so the lightest tool (``procmond ctl``) can use it.
"""

from __future__ import annotations

import enum
import re
from typing import Final

__all__ = [
    "IDENTIFIER",
    "IDENTIFIER_PATTERN",
    "MAX_DEADLINE_SPAN_S",
    "MAX_HEARTBEAT_INTERVAL_MS",
    "MAX_ID_CHARS",
    "MAX_MESSAGE_BYTES",
    "MIN_HEARTBEAT_INTERVAL_MS",
    "PROTOCOL_VERSION",
    "ConnectionStatus",
    "ErrorCategory",
    "ErrorCode",
    "HealthStatus",
    "Status",
]

PROTOCOL_VERSION: Final = 2
#: Protocol section 1: larger messages are refused.
MAX_MESSAGE_BYTES: Final = 1024 * 1024
#: Protocol section 1: identifiers. v2: they match as a whole string, not even a
#: trailing newline may follow. pydantic's (Rust) regex reads ``$`` as the end of
#: the text; Python's ``re`` lets ``$`` match before a final newline, so Python
#: code matches this with ``re.fullmatch`` (:data:`IDENTIFIER`), never ``match``.
IDENTIFIER_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
IDENTIFIER: Final = re.compile(IDENTIFIER_PATTERN.removesuffix("$"))
#: Protocol sections 3 and 10: ``request_id`` and ``correlation_id`` length limit.
MAX_ID_CHARS: Final = 128
#: Protocol section 10: a request's deadline is at most this long after its
#: ``timestamp``, so an idempotent repeat only has to be remembered this long.
MAX_DEADLINE_SPAN_S: Final = 300
#: Protocol section 7 (v2): the heartbeat interval an agent may assign; one
#: outside is ignored (a forged 1 ms would make the collector spin).
MIN_HEARTBEAT_INTERVAL_MS: Final = 1_000
MAX_HEARTBEAT_INTERVAL_MS: Final = 3_600_000


class Status(enum.StrEnum):
    """Response ``status`` (protocol section 3)."""

    SUCCESS = "Success"
    ERROR = "Error"
    TIMEOUT = "Timeout"
    UNAVAILABLE = "Unavailable"


class ErrorCategory(enum.StrEnum):
    """``error.category`` (protocol section 3)."""

    CONFIGURATION = "Configuration"
    RESOURCE = "Resource"
    COMMUNICATION = "Communication"
    PERMISSION = "Permission"
    INTERNAL = "Internal"
    TIMEOUT = "Timeout"


class ErrorCode(enum.StrEnum):
    """``error.code`` (protocol section 4), with the status and category each is sent with."""

    INVALID_REQUEST = "INVALID_REQUEST"
    UNSUPPORTED_OPERATION = "UNSUPPORTED_OPERATION"
    INVALID_STATE = "INVALID_STATE"
    VALIDATION_FAILED = "VALIDATION_FAILED"
    BUSY = "BUSY"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    TIMEOUT = "TIMEOUT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    INTERNAL = "INTERNAL"

    @property
    def status(self) -> Status:
        """The response status this code is sent with (protocol section 4)."""
        return _CODE_STATUS[self]

    @property
    def category(self) -> ErrorCategory:
        """The error category this code is sent with."""
        return _CODE_CATEGORY[self]


_CODE_STATUS: Final = {
    ErrorCode.INVALID_REQUEST: Status.ERROR,
    ErrorCode.UNSUPPORTED_OPERATION: Status.ERROR,
    ErrorCode.INVALID_STATE: Status.ERROR,
    ErrorCode.VALIDATION_FAILED: Status.ERROR,
    ErrorCode.BUSY: Status.UNAVAILABLE,
    ErrorCode.SHUTTING_DOWN: Status.UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED: Status.TIMEOUT,
    ErrorCode.TIMEOUT: Status.TIMEOUT,
    ErrorCode.UNAUTHENTICATED: Status.ERROR,
    ErrorCode.INTERNAL: Status.ERROR,
}
_CODE_CATEGORY: Final = {
    ErrorCode.INVALID_REQUEST: ErrorCategory.CONFIGURATION,
    ErrorCode.UNSUPPORTED_OPERATION: ErrorCategory.CONFIGURATION,
    ErrorCode.INVALID_STATE: ErrorCategory.CONFIGURATION,
    ErrorCode.VALIDATION_FAILED: ErrorCategory.CONFIGURATION,
    ErrorCode.BUSY: ErrorCategory.RESOURCE,
    ErrorCode.SHUTTING_DOWN: ErrorCategory.RESOURCE,
    ErrorCode.DEADLINE_EXCEEDED: ErrorCategory.TIMEOUT,
    ErrorCode.TIMEOUT: ErrorCategory.TIMEOUT,
    ErrorCode.UNAUTHENTICATED: ErrorCategory.PERMISSION,
    ErrorCode.INTERNAL: ErrorCategory.INTERNAL,
}


class HealthStatus(enum.StrEnum):
    """The health verdict (protocol section 6)."""

    HEALTHY = "Healthy"
    DEGRADED = "Degraded"
    UNHEALTHY = "Unhealthy"


class ConnectionStatus(enum.StrEnum):
    """``connection_status`` in HealthCheck and heartbeats (protocol section 6)."""

    CONNECTED = "Connected"
    DISCONNECTED = "Disconnected"
    RECONNECTING = "Reconnecting"
