"""Prometheus metrics without a Prometheus: the setting, the lock-free recorders, the
daemon's and the agent's families read from their running parts, and the HTTP endpoint.

The real-server tests are in tests/test_metrics_prometheus.py.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from memory_harness import make_ready, running_parts
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from procmond.agent.schemas import HeartbeatFields
from procmond.agent.tracker import Registration, Tracker
from procmond.cli.daemon import run
from procmond.config import build_settings, load_toml, parse_listen
from procmond.daemon.operations import SERVED_OPERATIONS
from procmond.errors import StartupError
from procmond.metrics.agent import COLLECTOR_STATES, AgentMetrics
from procmond.metrics.daemon import DaemonMetrics
from procmond.metrics.endpoint import MetricsEndpoint
from procmond.metrics.recorders import OTHER_OPERATION, Buckets, RpcRecorder

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(*collectors: object) -> Samples:
    """Every sample the collectors expose, through the real text exposition and parser."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


# -- the setting ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9464", ("::1", 9464)),
        ("metrics.local:80", ("metrics.local", 80)),
    ],
)
def test_listen_addresses_parse(text: str, expected: tuple[str, int]) -> None:
    """HOST:PORT, [v6]:PORT and port 0 (a free port) are accepted."""
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9464", ":9464", "host:", "host:99999", "host:x", "a b:1"])
def test_bad_listen_addresses_are_refused(text: str) -> None:
    """A missing host or port, or a port out of range, is a ValueError."""
    with pytest.raises(ValueError, match=r"HOST:PORT|port|host"):
        parse_listen(text)


def test_metrics_listen_is_off_by_default_and_set_by_flag_over_file(tmp_path: Path) -> None:
    """No endpoint unless asked; the flag (or PROCMOND_METRICS_LISTEN) beats the TOML key."""
    assert build_settings({}, {}).metrics_listen is None
    file = tmp_path / "procmond.toml"
    file.write_text('metrics_listen = "127.0.0.1:9464"\n')
    assert build_settings({}, {}, load_toml(file)).metrics_listen == "127.0.0.1:9464"
    flagged = build_settings({"metrics_listen": "[::1]:9100"}, {}, load_toml(file))
    assert flagged.metrics_listen == "[::1]:9100"
    option = next(p for p in run.params if p.name == "metrics_listen")
    assert option.envvar == "PROCMOND_METRICS_LISTEN"


@pytest.mark.parametrize("bad", ["nohost", 9464])
def test_a_bad_metrics_listen_stops_start_up_naming_it(bad: object) -> None:
    """A malformed address is a StartupError naming metrics_listen."""
    with pytest.raises(StartupError, match="metrics_listen"):
        build_settings({}, {}, {"metrics_listen": bad})


# -- recorders -------------------------------------------------------------------


def test_buckets_are_cumulative_and_inf_is_the_count() -> None:
    """Each bucket counts the values up to its bound; +Inf counts all; the sum adds up."""
    buckets = Buckets((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 3.0):
        buckets.observe(seconds)
    snapshot = buckets.snapshot()
    assert snapshot.buckets == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert snapshot.sum == pytest.approx(3.65)
    with pytest.raises(ValueError, match="increasing"):
        Buckets((1.0, 0.5))


def test_rpc_recorder_folds_unserved_operation_names_into_one_label() -> None:
    """Names from the wire that are not served count as 'other' (bounded label values)."""
    recorder = RpcRecorder(["HealthCheck"])
    recorder.answered("HealthCheck", "Success", 0.001)
    recorder.answered("Made-Up-1", "Error", 0.002)
    recorder.answered("Made-Up-2", "Error", 0.002)
    assert dict(recorder.request_counts()) == {
        ("HealthCheck", "Success"): 1,
        (OTHER_OPERATION, "Error"): 2,
    }


# -- the daemon's families ---------------------------------------------------------


async def test_daemon_metrics_follow_the_running_parts(tmp_path: Path) -> None:
    """Lifecycle, cycles, events, RPCs: the scrape shows what HealthCheck would say."""
    async with running_parts(tmp_path) as parts:
        metrics = DaemonMetrics(parts.actor, parts.pipeline, parts.bus, SERVED_OPERATIONS)
        parts.actor.collection.on_cycle = metrics.observe_cycle
        parts.rpc.on_answer = metrics.rpc.answered
        before = samples(metrics)
        assert value(before, "procmond_lifecycle_state", state="ready") == 0
        await make_ready(parts)
        cycles = parts.actor.collection.cycles
        await cycles.reach(cycles.value + 1)  # one cycle observed by the hook
        answer = await parts.client.call("HealthCheck", None)
        assert answer["status"] == "Success"
        await parts.client.call("NoSuchOperation", None)
        health = answer["payload"]["metrics"]
        found = samples(metrics)
    assert value(found, "procmond_lifecycle_state", state="ready") == 1
    assert value(found, "procmond_lifecycle_state", state="registering") == 0
    assert value(found, "procmond_bus_connection_state", status="Connected") == 1
    assert value(found, "procmond_capture_mode", mode="cycle") == 1
    assert value(found, "procmond_collection_cycles_total") >= health["collection_cycles"] >= 1
    assert value(found, "procmond_cycle_duration_seconds_count") == value(
        found, "procmond_collection_cycles_total"
    )
    assert value(found, "procmond_events_published_total") >= health["events_published"]
    assert value(found, "procmond_rpc_requests_total", operation="HealthCheck", status="Success")
    assert value(found, "procmond_rpc_requests_total", operation="other", status="Error") == 1
    assert value(found, "procmond_rpc_duration_seconds_count", operation="HealthCheck") == 1
    assert value(found, "procmond_mailbox_capacity_messages") == 100
    assert value(found, "procmond_wal_pending_events") >= 0
    for name in ("kernel_events", "kernel_events_lost", "partial_events"):
        assert value(found, f"procmond_{name}_total") == health[name]


# -- the agent's families ----------------------------------------------------------


def test_agent_metrics_count_states_heartbeats_losses_and_registrations() -> None:
    """Two collectors, one with a gap, one silent past three intervals: failed is 1."""
    tracker = Tracker()
    metrics = AgentMetrics(tracker, bus_connected=lambda: True, clock=lambda: 10.0)
    for cid in ("a", "b"):
        tracker.register(Registration(cid, "boot", 1000, "host", 1, "0.1.0"), 0.0)
    tracker.heartbeat("a", HeartbeatFields(collector_id="a", boot_id="boot", sequence=1), 9.0)
    tracker.heartbeat("a", HeartbeatFields(collector_id="a", boot_id="boot", sequence=4), 9.5)
    tracker.tick(10.0)
    metrics.observe(tracker.take_events())
    found = samples(metrics)
    assert value(found, "procmond_agent_collectors", state="failed") == 1
    assert value(found, "procmond_agent_collectors", state="registered") == 1
    assert {state for (name, labels) in found if name == "procmond_agent_collectors"
            for _, state in labels} >= set(COLLECTOR_STATES)  # fmt: skip
    assert value(found, "procmond_agent_registrations_total") == 2
    assert value(found, "procmond_agent_heartbeats_received_total") == 2
    assert value(found, "procmond_agent_heartbeats_lost_total") == 2
    assert value(found, "procmond_agent_heartbeat_age_seconds", collector_id="a") == 0.5
    assert value(found, "procmond_agent_heartbeat_age_seconds", collector_id="b") == 10.0
    assert value(found, "procmond_agent_events_total", kind="failed") == 1
    assert value(found, "procmond_agent_bus_connected") == 1


# -- the endpoint ------------------------------------------------------------------


def test_the_endpoint_serves_metrics_and_stops() -> None:
    """Port 0 binds a free port; /metrics answers with the process metrics; stop frees it."""
    tracker = Tracker()
    endpoint = MetricsEndpoint("127.0.0.1", 0, [AgentMetrics(tracker, bus_connected=lambda: False)])
    try:
        assert endpoint.port > 0
        with urllib.request.urlopen(endpoint.url, timeout=5) as reply:
            text = reply.read().decode()
        assert "procmond_agent_bus_connected 0.0" in text
        assert "process_resident_memory_bytes" in text
    finally:
        endpoint.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(endpoint.url, timeout=2)
