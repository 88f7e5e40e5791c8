"""Every topic and stream name of the wire contract (protocol sections 2, 8 and 9).

One module of names, importing only the standard library: the daemon, the
reference agent and the operator tools build topic strings here, so
``procmond ctl`` does not import the daemon to address a collector.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EVENT_KINDS",
    "EVENT_STREAMS",
    "HEALTH_PATTERN",
    "HEARTBEAT_PATTERN",
    "REGISTRATION_PATTERN",
    "STATUS_PATTERN",
    "collector_topic",
    "heartbeat_topic",
    "registration_topic",
    "response_topic",
    "status_topic",
    "stream_key",
]

#: Protocol sections 8 and 9 (v2 adds exec): one stream per kind of process event.
EVENT_KINDS: Final = ("start", "stop", "modify", "exec")
#: Protocol section 8: the stream keys (the topic string exactly).
EVENT_STREAMS: Final = tuple(f"events.process.{kind}" for kind in EVENT_KINDS)
#: What the agent pattern-subscribes (protocol section 2).
REGISTRATION_PATTERN: Final = "control.registration.*"
HEARTBEAT_PATTERN: Final = "control.health.heartbeat.*"
STATUS_PATTERN: Final = "control.health.status.*"
HEALTH_PATTERN: Final = "control.health.*"


def collector_topic(collector_id: str) -> str:
    """Where RPC requests to ``collector_id`` arrive."""
    return f"control.collector.{collector_id}"


def response_topic(client_id: str) -> str:
    """Where answers to ``client_id`` go."""
    return f"control.rpc.response.{client_id}"


def registration_topic(collector_id: str) -> str:
    """Where ``collector_id`` sends its Register and Deregister requests (v2, section 2)."""
    return f"control.registration.{collector_id}"


def status_topic(collector_id: str) -> str:
    """Lifecycle announcements of ``collector_id``."""
    return f"control.health.status.{collector_id}"


def heartbeat_topic(collector_id: str) -> str:
    """Heartbeats of ``collector_id``."""
    return f"control.health.heartbeat.{collector_id}"


def stream_key(kind: str) -> str:
    """The stream of one kind of process event."""
    return f"events.process.{kind}"
