"""The collector's metrics: a custom ``Collector`` over the daemon's plain attributes.

:class:`DaemonMetrics` turns every HealthCheck metric (protocol section 6)
and the daemon's other figures into Prometheus families when the endpoint's
thread asks (:mod:`procmond.metrics.endpoint`). It reads attributes only:
ints and floats the event loop replaces whole, enum members, ``len()`` of a
deque. It takes no lock, awaits nothing and calls nothing that could, so a
scrape never waits for the loop or a cycle and the loop never waits for a
scrape (the package docstring says why a slightly skewed snapshot is fine).
Two histograms need every observation: cycle durations
(:attr:`DaemonMetrics.cycles`, fed by the collection's ``on_cycle`` hook)
and RPC durations (:attr:`DaemonMetrics.rpc`, fed by the RPC service's
``on_answer`` hook); both are lock-free :mod:`~procmond.metrics.recorders`.

The metric list with each meaning is in docs/operations.md ("Prometheus").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, InfoMetricFamily, Metric

from fsm import State
from procmond.bus.types import Bus
from procmond.daemon.actor import ProcmondMonitorCollector
from procmond.daemon.health import assess, health_inputs
from procmond.metrics.families import counter, gauge, histogram, one_hot
from procmond.metrics.recorders import CYCLE_BUCKETS_S, Buckets, RpcRecorder
from procmond.protocol import ConnectionStatus, HealthStatus
from procmond.store.pipeline import EventPipeline

__all__ = ["CAPTURE_MODES", "DaemonMetrics"]

#: ``capture_mode`` values (protocol section 9).
CAPTURE_MODES = ("kernel", "cycle")


class DaemonMetrics:
    """The collector's families, computed at scrape time from the running parts."""

    def __init__(
        self,
        actor: ProcmondMonitorCollector,
        pipeline: EventPipeline,
        bus: Bus,
        operations: Iterable[str],
    ) -> None:
        self._actor = actor
        self._pipeline = pipeline
        self._bus = bus
        #: Cycle durations in seconds: give :meth:`observe_cycle` to the collection.
        self.cycles = Buckets(CYCLE_BUCKETS_S)
        #: Answered RPCs: give :meth:`RpcRecorder.answered` to the RPC service.
        self.rpc = RpcRecorder(operations)

    def observe_cycle(self, seconds: float) -> None:
        """One cycle ended, failed or not (the collection's hook, on the event loop)."""
        self.cycles.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        """Every family, read now (on the endpoint's thread)."""
        yield from self._identity()
        yield from self._collection()
        yield from self._pipeline_families()
        yield from self._control()

    def _identity(self) -> Iterator[Metric]:
        actor = self._actor
        identity = actor.identity
        yield InfoMetricFamily(
            "procmond",
            "This collector: 1, labelled with its id, version and host.",
            value={
                "collector_id": identity.collector_id,
                "version": identity.version,
                "hostname": identity.hostname,
            },
        )
        state = actor.state
        status = self._bus.status
        yield one_hot(
            "procmond_lifecycle_state",
            "Lifecycle state: 1 for the current one.",
            "state",
            [s.value for s in State],
            state.value,
        )
        yield one_hot(
            "procmond_bus_connection_state",
            "Connection to Redis: 1 for the current status.",
            "status",
            [s.value for s in ConnectionStatus],
            status.value,
        )
        yield one_hot(
            "procmond_health_status",
            "HealthCheck verdict: 1 for the current one.",
            "status",
            [s.value for s in HealthStatus],
            self._health(state, status).value,
        )

    def _health(self, state: State, status: ConnectionStatus) -> HealthStatus:
        """The verdict HealthCheck would give now (the same pure rules)."""
        window_s = self._actor.registrar.heartbeat_interval_ms / 1000
        inputs = health_inputs(state, status, self._actor.collection, self._pipeline, window_s)
        return assess(inputs)[0]

    def _collection(self) -> Iterator[Metric]:
        c = self._actor.collection
        yield counter(
            "procmond_collection_cycles_total",
            "Collection cycles finished, failed ones included.",
            c.cycles.value,
        )
        yield counter(
            "procmond_collection_errors_total",
            "Collection cycles that failed.",
            c.collection_errors,
        )
        yield counter(
            "procmond_process_errors_total",
            "Processes that could not be read during cycles (gone or denied).",
            c.process_errors,
        )
        yield gauge(
            "procmond_consecutive_failed_cycles",
            "Cycles failed in a row (3 make the collector Unhealthy).",
            c.consecutive_failures,
        )
        yield gauge(
            "procmond_processes_collected",
            "Processes seen by the last cycle.",
            c.processes_collected,
        )
        last_ms = c.last_cycle_ms
        yield gauge(
            "procmond_last_cycle_duration_seconds",
            "Duration of the last cycle (NaN before the first).",
            float("nan") if last_ms is None else last_ms / 1000,
        )
        yield histogram(
            "procmond_cycle_duration_seconds",
            "Duration of each collection cycle.",
            [([], self.cycles.snapshot())],
        )
        last = c.last_collection
        yield gauge(
            "procmond_last_collection_timestamp_seconds",
            "Unix time the last successful cycle ended (0 before the first).",
            0.0 if last is None else last.timestamp(),
        )
        config = c.config
        yield gauge(
            "procmond_collection_interval_seconds",
            "Configured collection interval.",
            config.collection_interval_secs,
        )
        yield gauge("procmond_config_version", "Configuration version in effect.", c.config_version)
        yield one_hot(
            "procmond_capture_mode",
            "How processes are captured: 1 for the current mode (kernel events or cycles).",
            "mode",
            CAPTURE_MODES,
            c.capture_mode,
        )
        yield counter(
            "procmond_kernel_events_total",
            "Process events received from the kernel.",
            c.kernel_events,
        )
        yield counter(
            "procmond_kernel_events_lost_total",
            "Process events the kernel dropped (each loss triggers a resync cycle).",
            c.kernel_events_lost,
        )
        yield counter(
            "procmond_partial_events_total",
            "Kernel events published with fields unread (the process was gone).",
            c.partial_events,
        )

    def _pipeline_families(self) -> Iterator[Metric]:
        p = self._pipeline
        wal = p.wal
        yield counter(
            "procmond_events_published_total",
            "Process events acknowledged by Redis.",
            p.events_published,
        )
        yield counter(
            "procmond_events_logged_total",
            "Process events written to the write-ahead log.",
            p.events_logged,
        )
        yield gauge(
            "procmond_wal_pending_events",
            "Events logged but not yet acknowledged by Redis (the buffer).",
            p.pending,
        )
        yield gauge(
            "procmond_buffer_capacity_events", "Buffer size at which collection pauses.", p.capacity
        )
        yield gauge(
            "procmond_buffer_level_ratio",
            "Buffer fill, 0 to 1 (Degraded from 0.7; collection pauses at 1).",
            p.level_percent / 100,
        )
        yield gauge(
            "procmond_events_unlogged",
            "Events held in memory because the write-ahead log refused them.",
            p.unlogged,
        )
        yield gauge("procmond_wal_bytes", "Size of the write-ahead log's segments.", wal.bytes_used)
        yield gauge(
            "procmond_wal_max_bytes", "Size cap of the write-ahead log.", wal.max_total_bytes
        )
        yield gauge(
            "procmond_wal_usage_ratio",
            "Write-ahead log size over its cap (Degraded from 0.9; full refuses events).",
            wal.usage_fraction,
        )

    def _control(self) -> Iterator[Metric]:
        actor = self._actor
        publisher = actor.publisher
        mailbox = actor.mailbox
        yield counter(
            "procmond_heartbeats_sent_total",
            "Heartbeats that reached the bus.",
            publisher.heartbeats_sent.value,
        )
        yield counter(
            "procmond_heartbeats_failed_total",
            "Heartbeats that could not be published (their sequence number is a gap).",
            publisher.heartbeats_failed,
        )
        yield gauge(
            "procmond_heartbeat_interval_seconds",
            "Heartbeat interval in force (the agent's assignment wins).",
            actor.registrar.heartbeat_interval_ms / 1000,
        )
        yield gauge(
            "procmond_mailbox_depth_messages", "Messages queued for the actor.", len(mailbox)
        )
        yield gauge(
            "procmond_mailbox_capacity_messages",
            "Requests the mailbox holds before answering BUSY.",
            mailbox.size,
        )
        yield gauge(
            "procmond_mailbox_high_water_messages",
            "Most requests the mailbox held at once.",
            mailbox.high_water,
        )
        yield counter(
            "procmond_mailbox_busy_total",
            "Requests answered BUSY (mailbox full).",
            mailbox.busy_total,
        )
        yield counter(
            "procmond_rpc_malformed_total",
            "Unanswerable messages dropped on the collector's topic.",
            actor.rpc_malformed_total,
        )
        yield from self._rpc()

    def _rpc(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "procmond_rpc_requests_total",
            "RPC requests answered, by operation (unserved names: other) and response status.",
            labels=["operation", "status"],
        )
        for (operation, status), count in sorted(self.rpc.request_counts()):
            requests.add_metric([operation, status], count)
        yield requests
        yield histogram(
            "procmond_rpc_duration_seconds",
            "Time from receipt to answer of each RPC request, by operation.",
            [([op], snap) for op, snap in sorted(self.rpc.duration_snapshots(), key=_first)],
            labels=["operation"],
        )


def _first(item: tuple[str, object]) -> str:
    return item[0]
