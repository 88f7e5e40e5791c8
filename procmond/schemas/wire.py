"""The building blocks of the wire models: the two base classes, identifier and
timestamp types, and the JSON helpers every message module uses.

:class:`Wire` is the base of outgoing messages (timestamps in the protocol's
form, a lone surrogate written as an escape), :class:`Strict` the base of
incoming payloads (no coercion, unknown keys refused).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

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

from procmond.protocol import IDENTIFIER_PATTERN, MAX_ID_CHARS

__all__ = [
    "Identifier",
    "RequestId",
    "Strict",
    "Wire",
    "WireTime",
    "error_summary",
    "escaped_json",
    "format_timestamp",
    "loads_object",
    "now_timestamp",
]

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


def escaped_json(document: dict[str, Any]) -> bytes:
    """ASCII JSON: any character, a lone surrogate too, as a ``\\u`` escape."""
    return json.dumps(document, ensure_ascii=True, separators=(",", ":")).encode()


class Wire(BaseModel):
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
            return escaped_json(self.model_dump(mode="json"))


class Strict(BaseModel):
    """Base of incoming payloads: no coercion, unknown keys refused."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def loads_object(data: bytes) -> dict[str, Any] | None:
    """Decode a JSON object; None when the bytes are not a JSON object."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def error_summary(exc: ValidationError, whole: str) -> str:
    """``loc: msg`` for each error, ``; ``-separated; ``whole`` names an error of the object."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )
