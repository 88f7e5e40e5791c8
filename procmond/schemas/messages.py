"""Registration, status and heartbeat messages (protocol section 7).

What procmond sends to the agent (Register, Deregister, lifecycle
announcements, heartbeats) and what it reads of the agent's answers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticSerializationError

from procmond.protocol import HealthStatus
from procmond.schemas.wire import Wire, escaped_json, loads_object

__all__ = [
    "AgentResponse",
    "DeregisterPayload",
    "Heartbeat",
    "HeartbeatMetrics",
    "RegisterPayload",
    "RegistrationAnswer",
    "StatusAnnouncement",
    "parse_agent_response",
    "parse_registration_answer",
]


class RegisterPayload(Wire):
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
    #: Any integer reads: the registrar ignores (with a warning) one outside
    #: 1,000..3,600,000 ms and keeps the answer (protocol section 7).
    heartbeat_interval_ms: int | None = None


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


class DeregisterPayload(Wire):
    """Payload of the Deregister request."""

    collector_id: str
    boot_id: str
    reason: str
    force: bool = False
    events_flushed: int
    wal_pending: int


class StatusAnnouncement(Wire):
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
            return escaped_json(self.model_dump(mode="json", exclude_none=True))


class HeartbeatMetrics(Wire):
    """``metrics`` of a heartbeat."""

    processes_collected: int
    events_published: int
    buffer_level_percent: float
    connection_status: str
    config_version: int
    #: Protocol section 9 (v2).
    capture_mode: Literal["kernel", "cycle"]
    kernel_events: int
    kernel_events_lost: int
    partial_events: int


class Heartbeat(Wire):
    """A heartbeat on ``control.health.heartbeat.{collector_id}``."""

    collector_id: str
    boot_id: str
    sequence: int
    timestamp: datetime
    state: str
    health_status: HealthStatus
    reasons: list[str]
    metrics: HeartbeatMetrics
