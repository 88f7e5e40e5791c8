"""End to end: a real ``procmond run`` against a private redis-server, driven by the contract agent.

Every wait is bounded; nothing sleeps a fixed time; nothing asserts on timing.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from contract_agent import seq_report
from e2e_support import (
    HEALTH_FIELDS,
    HEALTH_METRICS,
    RESPONSE_FIELDS,
    churn_child,
    daemon,
    marked,
    new_id,
    poll,
    running_agent,
    started,
)

from procmond.embedded import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


async def test_full_session_register_heartbeat_rpcs_shutdown_deregister(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """Register, ready, heartbeats at the assigned interval, RPCs, GracefulShutdown, exit 0."""
    cid = new_id()
    async with running_agent(fresh_redis.url, heartbeat_interval_ms=1000) as agent:
        with daemon(tmp_path, fresh_redis.url, cid) as proc:
            ready = await agent.wait_for_state(cid, "ready", timeout=15)
            first_register = agent.registers.items[0]
            register = first_register.message
            assert register["operation"] == "Register"
            assert register["client_id"] == cid
            # Protocol v2 section 2: on the collector's own registration topic.
            assert first_register.channel == f"control.registration.{cid}"
            assert register["target"] == f"control.registration.{cid}"
            assert agent.misaddressed.items == []
            payload = register["payload"]
            assert payload["collector_id"] == cid
            assert payload["collector_type"] == "process-monitor"
            assert payload["pid"] == proc.pid
            assert isinstance(payload["capabilities"], list)
            boot_id = payload["boot_id"]
            assert ready == {
                "collector_id": cid,
                "boot_id": boot_id,
                "state": "ready",
                "timestamp": ready["timestamp"],
                "heartbeat_interval_ms": 1000,
            }

            # The assigned 1 s wins over the collector's own 200 ms (the test helper's):
            # five arrive well within 15 s.
            beats = await agent.wait_for_heartbeats(cid, 5, timeout=15)
            assert [b.message["sequence"] for b in beats[:5]] == [1, 2, 3, 4, 5]
            first = beats[0].message
            assert first["boot_id"] == boot_id
            assert first["state"] == "ready"
            assert first["health_status"] in ("Healthy", "Degraded")
            assert set(first["metrics"]) == {
                "processes_collected",
                "events_published",
                "buffer_level_percent",
                "connection_status",
                "config_version",
                # protocol v2 section 9
                "capture_mode",
                "kernel_events",
                "kernel_events_lost",
                "partial_events",
            }
            assert first["metrics"]["capture_mode"] in ("kernel", "cycle")

            health = await agent.call(cid, "HealthCheck", None)
            assert set(health) == RESPONSE_FIELDS
            assert health["status"] == "Success"
            assert health["service_id"] == cid
            assert health["state"] == "ready"
            assert health["correlation_id"] == health["request_id"]
            body = health["payload"]
            assert set(body) == HEALTH_FIELDS
            assert set(body["metrics"]) == HEALTH_METRICS
            assert body["collector_id"] == cid
            assert body["boot_id"] == boot_id
            assert body["pid"] == proc.pid
            assert body["connection_status"] == "Connected"
            assert body["config_version"] == 1
            assert body["status"] in ("Healthy", "Degraded")

            # Churn: a child started and ended while we watch.
            marker = f"churn-{cid}"
            with churn_child(marker):
                await poll(
                    lambda: agent.read_events(cid),
                    lambda e: bool(started(e, marker)),
                    timeout=15,
                )
            await poll(
                lambda: agent.read_events(cid),
                lambda e: bool(marked(e, marker, "events.process.stop")),
                timeout=15,
            )

            updated = await agent.call(
                cid,
                "UpdateConfig",
                {"changes": {"max_processes": 5000, "max_events_in_flight": 1000}},
            )
            assert updated["status"] == "Success", updated
            assert updated["payload"]["config_version"] == 2
            assert updated["payload"]["changed_fields"] == ["max_processes"]
            assert updated["payload"]["config"]["max_processes"] == 5000
            same = await agent.call(cid, "UpdateConfig", {"changes": {"max_processes": 5000}})
            assert same["payload"]["config_version"] == 2
            assert same["payload"]["changed_fields"] == []
            dry = await agent.call(
                cid, "UpdateConfig", {"changes": {"max_processes": 7}, "validate_only": True}
            )
            assert dry["status"] == "Success"
            assert dry["payload"]["config_version"] == 2
            assert dry["payload"]["config"]["max_processes"] == 7
            for bad in (
                {"collection_interval_secs": "5"},
                {"collection_interval_secs": 0.5},
                {"no_such_key": 1},
                {"max_processes": True, "max_events_in_flight": 0},
                {},
            ):
                refused = await agent.call(cid, "UpdateConfig", {"changes": bad})
                assert refused["status"] == "Error", (bad, refused)
                error = refused["error"]
                assert error["code"] == "VALIDATION_FAILED"
                assert error["context"]["errors"]
                assert all(set(e) == {"field", "message"} for e in error["context"]["errors"])
            after = await agent.call(cid, "HealthCheck", {})
            assert after["payload"]["config_version"] == 2
            assert after["payload"]["config"]["max_processes"] == 5000
            await agent.wait_for_heartbeats(
                cid, 1, where=lambda m: m["metrics"]["config_version"] == 2
            )

            shutdown = await agent.call(
                cid,
                "GracefulShutdown",
                {"reason": "end of test", "graceful_timeout_ms": 10000},
                timeout=20,
            )
            assert shutdown["status"] == "Success", shutdown
            result = shutdown["payload"]
            assert set(result) == {"events_flushed", "wal_pending", "drain_ms", "complete"}
            assert result["complete"] is True
            assert result["wal_pending"] == 0
            deregister = await agent.wait_for_deregister()
            assert agent.deregisters.items[0].channel == f"control.registration.{cid}"
            assert deregister["operation"] == "Deregister"
            assert deregister["target"] == f"control.registration.{cid}"
            assert deregister["payload"]["collector_id"] == cid
            assert deregister["payload"]["boot_id"] == boot_id
            assert deregister["payload"]["force"] is False
            assert deregister["payload"]["wal_pending"] == 0
            assert deregister["payload"]["events_flushed"] == result["events_flushed"]
            gone = await agent.wait_for_state(cid, "deregistered")
            assert gone["boot_id"] == boot_id
            assert await proc.wait_async(15) == 0
            assert agent.states(cid) == ["ready", "draining", "deregistered"]

            sequences = [b.message["sequence"] for b in agent.heartbeats[cid].items]
            assert sequences == list(range(1, len(sequences) + 1))
            entries = await agent.read_events(cid)
            report = seq_report(entries)
            assert report.first == 1
            assert report.missing == []
            assert any(e["event"].get("baseline") for e in entries)


async def test_sigterm_drains_deregisters_and_exits_zero(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """SIGTERM takes the GracefulShutdown path: draining, Deregister, deregistered, exit 0."""
    cid = new_id()
    async with running_agent(fresh_redis.url, heartbeat_interval_ms=60_000) as agent:
        with daemon(tmp_path, fresh_redis.url, cid) as proc:
            await agent.wait_for_state(cid, "ready", timeout=15)
            # With a 60 s interval, a heartbeat within 10 s can only be the immediate first one.
            beats = await agent.wait_for_heartbeats(cid, 1, timeout=10)
            assert beats[0].message["sequence"] == 1
            proc.signal(signal.SIGTERM)
            await agent.wait_for_deregister()
            await agent.wait_for_state(cid, "deregistered")
            assert await proc.wait_async(15) == 0
            assert agent.states(cid) == ["ready", "draining", "deregistered"]
            assert "SIGTERM received" in proc.stderr_text()
