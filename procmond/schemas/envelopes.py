"""RPC envelopes (protocol section 3): the request procmond serves, its response,
the requests procmond itself sends, and the parsing of an incoming request.

What a request's ``payload`` holds is per operation: :mod:`procmond.schemas.payloads`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from procmond.protocol import ErrorCategory, Status
from procmond.schemas.wire import Identifier, RequestId, Wire, WireTime, error_summary

__all__ = [
    "OutgoingRequest",
    "RequestError",
    "RpcErrorBody",
    "RpcRequest",
    "RpcResponse",
    "parse_request",
]


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


class RpcErrorBody(Wire):
    """``error`` of a response."""

    code: str
    message: str
    category: ErrorCategory
    context: dict[str, Any] = Field(default_factory=dict)


class RpcResponse(Wire):
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


class OutgoingRequest(Wire):
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
        details = error_summary(exc, "request")
        # Salvage only what the answer can carry: a string with a lone surrogate
        # cannot be written as UTF-8 (it is echoed as "").
        raw_id = _utf8_text(document.get("request_id"))
        raw_op = _utf8_text(document.get("operation"))
        raise RequestError(f"invalid request envelope: {details}", raw_id, raw_op) from exc


def _utf8_text(value: object) -> str:
    """``value`` if it is a string UTF-8 can encode (no lone surrogate), else ``""``."""
    if not isinstance(value, str):
        return ""
    try:
        value.encode()
    except UnicodeEncodeError:
        return ""
    return value
