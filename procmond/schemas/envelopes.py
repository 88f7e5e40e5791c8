"""RPC envelopes (protocol section 3): the request procmond serves, its response,
the requests procmond itself sends, and the parsing of an incoming request.

What a request's ``payload`` holds is per operation: :mod:`procmond.schemas.payloads`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from procmond.protocol import MAX_DEADLINE_SPAN_S, MAX_ID_CHARS, ErrorCategory, Status
from procmond.schemas.wire import Identifier, RequestId, Wire, WireTime, error_summary

__all__ = [
    "OutgoingRequest",
    "RequestError",
    "RpcErrorBody",
    "RpcRequest",
    "RpcResponse",
    "parse_request",
]

#: The error type of a deadline too far after the timestamp.
DEADLINE_SPAN_ERROR = "deadline_span"


class RpcRequest(BaseModel):
    """An RPC request; unknown envelope fields are ignored for forward compatibility.

    Limits (protocol sections 3 and 10): ``request_id`` and ``correlation_id``
    1..128 characters, ``operation`` too (procmond's own bound: every operation
    name is short, and a longer one would only be echoed back), and a
    ``deadline`` at most 300 s after the ``timestamp`` (so a remembered answer
    need not outlive 300 s).
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    request_id: RequestId
    client_id: Identifier
    target: str
    operation: Annotated[str, StringConstraints(max_length=MAX_ID_CHARS)]
    payload: dict[str, Any] | None = None
    timestamp: WireTime
    deadline: WireTime
    correlation_id: RequestId | None = None

    @field_validator("deadline")
    @classmethod
    def _deadline_span(cls, deadline: datetime, info: ValidationInfo) -> datetime:
        timestamp = info.data.get("timestamp")
        if timestamp is None:  # the timestamp's own error is reported
            return deadline
        span = (deadline - timestamp).total_seconds()
        if span > MAX_DEADLINE_SPAN_S:
            raise PydanticCustomError(
                DEADLINE_SPAN_ERROR,
                "deadline is {span_s} s after timestamp, more than the {limit_s} s allowed",
                {"span_s": round(span), "limit_s": MAX_DEADLINE_SPAN_S},
            )
        return deadline


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
    """An envelope breaks the schema; ``request_id`` is whatever could be salvaged.

    ``errors`` is ``[{field, message}]`` (with ``length`` and ``limit`` for a
    value over its length limit): the answer's ``error.context.errors``, saying
    what was wrong without echoing the value.
    """

    def __init__(
        self,
        message: str,
        request_id: str,
        operation: str,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        self.request_id = request_id
        self.operation = operation
        self.errors = errors or []
        super().__init__(message)


def parse_request(document: Mapping[str, Any]) -> RpcRequest:
    """Validate a decoded request object; raise :class:`RequestError` with salvage."""
    try:
        return RpcRequest.model_validate(document)
    except ValidationError as exc:
        details = error_summary(exc, "request")
        # Salvage only what the answer can carry: a string with a lone surrogate
        # cannot be written as UTF-8, and one over 128 characters is not echoed
        # (protocol section 10): either is answered as "".
        raw_id = _echoable(document.get("request_id"))
        raw_op = _echoable(document.get("operation"))
        errors = [_field_error(e, document) for e in exc.errors(include_url=False)]
        raise RequestError(f"invalid request envelope: {details}", raw_id, raw_op, errors) from exc


def _field_error(error: Any, document: Mapping[str, Any]) -> dict[str, Any]:
    """One validation error as ``{field, message}``, and the length of a too long value."""
    loc = error["loc"]
    field = ".".join(str(p) for p in loc) or "request"
    if error["type"] == DEADLINE_SPAN_ERROR:
        return {"field": field, "message": error["msg"], **error.get("ctx", {})}
    entry: dict[str, Any] = {"field": field, "message": error["msg"]}
    if error["type"] == "string_too_long" and len(loc) == 1:
        value = document.get(str(loc[0]))
        entry["limit"] = error.get("ctx", {}).get("max_length")
        entry["length"] = len(value) if isinstance(value, str) else None
    return entry


def _echoable(value: object) -> str:
    """``value`` if it may be echoed in an answer: a string of at most 128
    characters that UTF-8 can encode (no lone surrogate); else ``""``."""
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
        return ""
    try:
        value.encode()
    except UnicodeEncodeError:
        return ""
    return value
