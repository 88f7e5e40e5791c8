"""Announcements and heartbeats (protocol section 7), published in the order they were made.

The lifecycle's ``announce`` action puts the new state on
``control.health.status.{collector_id}``; while the ``heartbeat`` activity
runs, :meth:`Publisher.heartbeat_timer` sends the actor a ``HeartbeatTick``
every interval, and the actor hands each heartbeat (built from one health
assessment) back here. Everything goes out through one task, in order, so
``ready`` is on the bus before the first heartbeat. Heartbeats are numbered
from 1 for this boot; one that cannot be sent still uses its number, so a
gap means a lost heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from fsm import State, effects
from procmond.bus.types import Bus, BusError
from procmond.daemon.messages import HeartbeatTick, Message
from procmond.daemon.readiness import Counter
from procmond.logs import RateLimitedLog
from procmond.schemas import HealthPayload, Heartbeat, HeartbeatMetrics, StatusAnnouncement
from procmond.topics import heartbeat_topic, status_topic

__all__ = ["PUBLISH_WARNING_INTERVAL_S", "Publisher"]

log = logging.getLogger("procmond.registration")

#: At most one "could not publish" warning per topic per this many seconds.
PUBLISH_WARNING_INTERVAL_S: Final = 10.0


class Publisher:
    """One collector's ordered publisher of announcements and heartbeats."""

    def __init__(
        self, bus: Bus, collector_id: str, boot_id: str, interval_ms: Callable[[], int]
    ) -> None:
        """``interval_ms`` is the heartbeat interval in force (the agent's assignment wins)."""
        self._bus = bus
        self._cid = collector_id
        self._boot_id = boot_id
        self._interval_ms = interval_ms
        self._outbox: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue()
        self._unpublished = 0
        self._publish_log = RateLimitedLog(log, PUBLISH_WARNING_INTERVAL_S)
        self.heartbeat_sequence = 0
        self.heartbeats_failed = 0
        self.announcements_failed = 0
        #: Heartbeats and announcements that reached the bus (readiness).
        self.heartbeats_sent = Counter()
        self.announced = Counter()

    def announce(self, state: State) -> None:
        """Action ``announce``: publish ``state`` on the status topic (in order)."""
        announcement = StatusAnnouncement(
            collector_id=self._cid,
            boot_id=self._boot_id,
            state=state.value,
            timestamp=datetime.now(UTC),
            heartbeat_interval_ms=self._interval_ms()
            if effects(state).announces_interval
            else None,
        )
        self._queue(status_topic(self._cid), announcement.to_bytes(), is_heartbeat=False)

    def heartbeat(self, health: HealthPayload) -> None:
        """Queue one heartbeat built from one health assessment; it takes the next number."""
        self.heartbeat_sequence += 1
        heartbeat = Heartbeat(
            collector_id=self._cid,
            boot_id=self._boot_id,
            sequence=self.heartbeat_sequence,
            timestamp=datetime.now(UTC),
            state=health.state,
            health_status=health.status,
            reasons=health.reasons,
            metrics=HeartbeatMetrics(
                processes_collected=health.metrics.processes_collected,
                events_published=health.metrics.events_published,
                buffer_level_percent=health.metrics.buffer_level_percent,
                connection_status=health.connection_status,
                config_version=health.config_version,
                capture_mode=health.metrics.capture_mode,
                kernel_events=health.metrics.kernel_events,
                kernel_events_lost=health.metrics.kernel_events_lost,
                partial_events=health.metrics.partial_events,
            ),
        )
        self._queue(heartbeat_topic(self._cid), heartbeat.to_bytes(), is_heartbeat=True)

    def _queue(self, topic: str, data: bytes, *, is_heartbeat: bool) -> None:
        self._unpublished += 1
        self._outbox.put_nowait((topic, data, is_heartbeat))

    async def heartbeat_timer(self, tell: Callable[[Message], bool]) -> None:
        """Activity ``heartbeat``: a HeartbeatTick to the actor every interval."""
        while True:
            await asyncio.sleep(self._interval_ms() / 1000)
            tell(HeartbeatTick())

    async def run(self) -> None:
        """Publish what was queued, in order, until cancelled."""
        while True:
            topic, data, is_heartbeat = await self._outbox.get()
            try:
                await self._bus.publish(topic, data)
            except BusError as exc:
                # While the bus is down this fails every heartbeat: say it once a while.
                self._publish_log(logging.WARNING, topic, "could not publish on %s: %s", topic, exc)
                if is_heartbeat:
                    self.heartbeats_failed += 1
                else:
                    self.announcements_failed += 1
            else:
                (self.heartbeats_sent if is_heartbeat else self.announced).add()
            finally:
                self._unpublished -= 1
                self._outbox.task_done()

    @property
    def publishing(self) -> bool:
        """True while announcements or heartbeats wait to be published."""
        return self._unpublished > 0

    async def flush(self, timeout: float) -> bool:
        """Wait (bounded) until everything queued was published or failed."""
        try:
            async with asyncio.timeout(timeout):
                await self._outbox.join()
        except TimeoutError:
            return False
        return True
