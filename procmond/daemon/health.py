"""Health rules of protocol section 6, as one pure function.

The lifecycle state weighs in as its row of the table declares
(:attr:`fsm.Effects.health`: ``draining`` and ``deregistered`` make the
collector Unhealthy, ``unregistered`` and ``registering`` Degraded). Besides
the state: ``Unhealthy`` after 3 failed collection cycles in a row, or when
the write-ahead log cannot be written; ``Degraded`` when the bus is not
connected, the buffer is at 70 % or more, the log is near its size cap, or
the last cycle failed; else ``Healthy``. Each applying condition is named in
``reasons``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from fsm import Severity, State, effects
from procmond.daemon.collection import Collection
from procmond.daemon.registration import Identity
from procmond.protocol import ConnectionStatus, HealthStatus
from procmond.schemas import HealthMetrics, HealthPayload
from procmond.store.pipeline import EventPipeline

#: Protocol section 6: three failed cycles in a row make the collector Unhealthy.
FAILED_CYCLES_UNHEALTHY: Final = 3
#: Protocol section 6: Degraded from 70 % buffer level (also where backpressure starts).
BUFFER_DEGRADED_PERCENT: Final = 70.0
#: Degraded when the write-ahead log is this full: a warning before it refuses events.
WAL_NEAR_CAP: Final = 0.9


@dataclass(frozen=True)
class HealthInputs:
    """What the verdict is computed from."""

    state: State
    connection_status: str
    buffer_level_percent: float
    consecutive_failed_cycles: int
    last_cycle_failed: bool
    wal_near_cap: bool = False
    wal_error: str | None = None
    #: Kernel events lost within the last heartbeat interval (protocol section 9).
    kernel_loss: int = 0


def assess(inputs: HealthInputs) -> tuple[HealthStatus, list[str]]:
    """The health status and the reasons behind it."""
    unhealthy: list[str] = []
    degraded: list[str] = []
    state_effect = effects(inputs.state).health
    if state_effect is not None:
        weight = unhealthy if state_effect.severity is Severity.UNHEALTHY else degraded
        weight.append(state_effect.reason.format(state=inputs.state.value))
    if inputs.consecutive_failed_cycles >= FAILED_CYCLES_UNHEALTHY:
        unhealthy.append(f"{inputs.consecutive_failed_cycles} collection cycles failed in a row")
    if inputs.wal_error is not None:
        unhealthy.append(f"write-ahead log unavailable: {inputs.wal_error}")
    if inputs.connection_status != ConnectionStatus.CONNECTED:
        degraded.append(f"bus {inputs.connection_status.lower()}")
    if inputs.buffer_level_percent >= BUFFER_DEGRADED_PERCENT:
        degraded.append(f"event buffer at {inputs.buffer_level_percent:.0f}%")
    if inputs.wal_near_cap:
        degraded.append("write-ahead log near its size cap")
    if inputs.kernel_loss:
        degraded.append(f"kernel dropped process events ({inputs.kernel_loss} so far); resynced")
    if inputs.last_cycle_failed and inputs.consecutive_failed_cycles < FAILED_CYCLES_UNHEALTHY:
        degraded.append("last collection cycle failed")
    if unhealthy:
        return HealthStatus.UNHEALTHY, unhealthy + degraded
    if degraded:
        return HealthStatus.DEGRADED, degraded
    return HealthStatus.HEALTHY, []


def health_inputs(
    state: State,
    connection: ConnectionStatus,
    collection: Collection,
    pipeline: EventPipeline,
    loss_window_s: float,
) -> HealthInputs:
    """What the verdict is computed from, read off the daemon's parts now."""
    return HealthInputs(
        state=state,
        connection_status=connection.value,
        buffer_level_percent=pipeline.level_percent,
        consecutive_failed_cycles=collection.consecutive_failures,
        last_cycle_failed=collection.last_cycle_failed,
        wal_near_cap=pipeline.wal.usage_fraction >= WAL_NEAR_CAP,
        wal_error=collection.wal_error,
        kernel_loss=_recent_loss(collection, loss_window_s),
    )


def health_payload(
    identity: Identity,
    state: State,
    connection: ConnectionStatus,
    uptime_s: float,
    collection: Collection,
    pipeline: EventPipeline,
    *,
    heartbeats_sent: int,
    rpc_malformed_total: int,
    loss_window_s: float,
) -> HealthPayload:
    """The HealthCheck answer payload (protocol section 6), from one assessment."""
    inputs = health_inputs(state, connection, collection, pipeline, loss_window_s)
    status, reasons = assess(inputs)
    return HealthPayload(
        collector_id=identity.collector_id,
        boot_id=identity.boot_id,
        state=state.value,
        status=status,
        reasons=reasons,
        connection_status=connection.value,
        uptime_seconds=round(uptime_s, 3),
        pid=identity.pid,
        hostname=identity.hostname,
        version=identity.version,
        config=collection.config,
        config_version=collection.config_version,
        last_collection=collection.last_collection,
        metrics=HealthMetrics(
            processes_collected=collection.processes_collected,
            events_published=pipeline.events_published,
            buffer_level_percent=pipeline.level_percent,
            collection_cycles=collection.cycles.value,
            collection_errors=collection.collection_errors,
            last_cycle_ms=collection.last_cycle_ms,
            wal_pending=pipeline.pending,
            heartbeats_sent=heartbeats_sent,
            rpc_malformed_total=rpc_malformed_total,
            capture_mode=collection.capture_mode,
            kernel_events=collection.kernel_events,
            kernel_events_lost=collection.kernel_events_lost,
            partial_events=collection.partial_events,
        ),
    )


def _recent_loss(collection: Collection, window_s: float) -> int:
    """Kernel events lost so far, if the last loss is within ``window_s`` (else 0)."""
    last = collection.last_kernel_loss
    if last is None or time.monotonic() - last > window_s:
        return 0
    return collection.kernel_events_lost
