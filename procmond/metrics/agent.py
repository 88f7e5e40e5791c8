"""The reference agent's metrics: the fleet as its :class:`~procmond.agent.tracker.Tracker` sees it.

:class:`AgentMetrics` is a custom ``Collector`` like the daemon's
(:mod:`procmond.metrics.daemon`): the endpoint's thread reads the tracker's
plain attributes at scrape time, without a lock and without the event loop,
so a scrape never delays a heartbeat's handling. The collectors table is
copied first (``list(dict.values())`` is one C call under the GIL, so a
collector registering meanwhile cannot break the iteration). Counts the
tracker does not keep (registrations, heartbeats lost, events by kind) are
taken from the agent's events as they are handed to the view
(:meth:`AgentMetrics.watching`), on the event loop, with plain arithmetic.

The metric list with each meaning is in docs/operations.md ("Prometheus").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from operator import attrgetter

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from procmond.agent.tracker import AgentEvent, EventKind, Liveness, Tracker
from procmond.metrics.endpoint import MetricsEndpoint
from procmond.metrics.families import counter, gauge

__all__ = ["COLLECTOR_STATES", "AgentEndpoint", "AgentMetrics"]

#: States always exported (0 when no collector is in them), so an alert on
#: ``failed`` has a series to compare. Lifecycle states as announced, then the
#: agent's liveness verdicts, which win when bad (``CollectorRecord.state``).
COLLECTOR_STATES = (
    "registered",
    "registering",
    "ready",
    "draining",
    "deregistered",
    *(v.value for v in Liveness if v is not Liveness.ALIVE),
)

EventsCallback = Callable[[list[AgentEvent]], None]


class AgentMetrics:
    """The agent's families, computed at scrape time from the tracker."""

    def __init__(
        self,
        tracker: Tracker,
        *,
        bus_connected: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` must be the agent's (ages are measured on it)."""
        self._tracker = tracker
        self._bus_connected = bus_connected
        self._clock = clock
        self.events: dict[str, int] = {kind.value: 0 for kind in EventKind}
        self.registrations = 0
        self.heartbeats_lost = 0

    def observe(self, events: list[AgentEvent]) -> None:
        """Count the agent's events (on the event loop)."""
        for event in events:
            self.events[event.kind.value] = self.events.get(event.kind.value, 0) + 1
            if event.kind is EventKind.REGISTERED:
                self.registrations += 1
            elif event.kind is EventKind.LOST_HEARTBEATS:
                missing = event.data.get("missing")
                self.heartbeats_lost += missing if isinstance(missing, int) else 0

    def watching(self, on_events: EventsCallback) -> EventsCallback:
        """``on_events`` that counts each batch first (give it to the ``Agent``)."""

        def both(events: list[AgentEvent]) -> None:
            self.observe(events)
            on_events(events)

        return both

    def collect(self) -> Iterator[Metric]:
        """Every family, read now (on the endpoint's thread)."""
        tracker = self._tracker
        records = list(tracker.collectors.values())
        now = self._clock()
        by_state = dict.fromkeys(COLLECTOR_STATES, 0)
        for record in records:
            by_state[record.state] = by_state.get(record.state, 0) + 1
        collectors = GaugeMetricFamily(
            "procmond_agent_collectors",
            "Collectors known to the agent, by state (a liveness verdict wins over the "
            "lifecycle state: late, failed, suspect).",
            labels=["state"],
        )
        for state, count in by_state.items():
            collectors.add_metric([state], count)
        yield collectors
        age = GaugeMetricFamily(
            "procmond_agent_heartbeat_age_seconds",
            "Seconds since each watched collector's last heartbeat (or its registration "
            "before the first), on the agent's clock.",
            labels=["collector_id"],
        )
        interval = GaugeMetricFamily(
            "procmond_agent_heartbeat_interval_seconds",
            "Heartbeat interval of each watched collector.",
            labels=["collector_id"],
        )
        for record in sorted(records, key=attrgetter("collector_id")):
            if not record.watched:
                continue
            last = record.last_beat if record.last_beat is not None else record.ref
            age.add_metric([record.collector_id], max(0.0, now - last))
            interval.add_metric([record.collector_id], record.interval_s)
        yield age
        yield interval
        yield counter(
            "procmond_agent_heartbeats_received_total",
            "Heartbeats accepted (in sequence, of a known or adopted boot).",
            tracker.heartbeats_total,
        )
        yield counter(
            "procmond_agent_heartbeats_lost_total",
            "Heartbeats missing from the sequence numbers (gaps).",
            self.heartbeats_lost,
        )
        yield counter(
            "procmond_agent_registrations_total", "Register requests accepted.", self.registrations
        )
        yield counter(
            "procmond_agent_malformed_total",
            "Announcements and heartbeats that could not be read.",
            tracker.malformed_total,
        )
        yield counter(
            "procmond_agent_stale_heartbeats_total",
            "Heartbeats of a replaced boot, ignored.",
            tracker.stale_total,
        )
        events = CounterMetricFamily(
            "procmond_agent_events_total",
            "Notable changes the agent reported, by kind (the JSON lines of procmond agent).",
            labels=["kind"],
        )
        for kind, count in sorted(self.events.items()):
            events.add_metric([kind], count)
        yield events
        yield gauge(
            "procmond_agent_bus_suspect",
            "1 while the agent suspects the bus (most collectors silent, or itself cut off).",
            1.0 if tracker.bus_suspect else 0.0,
        )
        yield gauge(
            "procmond_agent_bus_connected",
            "1 while the agent is connected to Redis.",
            1.0 if self._bus_connected() else 0.0,
        )


class AgentEndpoint:
    """The agent's ``/metrics``: :class:`AgentMetrics` served, or nothing when not asked for."""

    def __init__(
        self,
        tracker: Tracker,
        bus_connected: Callable[[], bool],
        listen: tuple[str, int] | None,
    ) -> None:
        """Bind now when ``listen`` is given (OSError when it cannot be bound)."""
        self.metrics: AgentMetrics | None = None
        self._endpoint: MetricsEndpoint | None = None
        if listen is not None:
            self.metrics = AgentMetrics(tracker, bus_connected=bus_connected)
            self._endpoint = MetricsEndpoint(*listen, [self.metrics])

    @property
    def url(self) -> str | None:
        """Where it listens (None: off)."""
        return None if self._endpoint is None else self._endpoint.url

    def watching(self, on_events: EventsCallback) -> EventsCallback:
        """``on_events``, counting each batch first while metrics are on."""
        return on_events if self.metrics is None else self.metrics.watching(on_events)

    async def stop(self) -> None:
        """Stop serving (off the event loop: the server's shutdown waits for its poll)."""
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            await asyncio.to_thread(endpoint.stop)
