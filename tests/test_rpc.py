"""The RPC service over a MemoryBus: envelopes, error codes, idempotent repeats, malformed drops."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from memory_harness import CID, CLIENT, FakeCollector, make_ready, running_parts

from fsm import State

RESPONSES = f"control.rpc.response.{CLIENT}"


async def test_health_check_envelope_and_correlation(tmp_path: Path) -> None:
    """A HealthCheck is answered on the caller's topic with the request's ids and timings."""
    async with running_parts(tmp_path) as parts:
        await parts.actor.entered[State.REGISTERING].reach(1)  # the agent holds the answer
        answer = await parts.client.call("HealthCheck", None, correlation_id="corr-1")
        assert answer["status"] == "Success"
        assert answer["correlation_id"] == "corr-1"
        assert answer["service_id"] == CID
        assert answer["state"] == "registering"
        assert answer["payload"]["metrics"]["rpc_malformed_total"] == 0
        assert answer["total_time_ms"] >= answer["queue_time_ms"]


async def test_invalid_requests(tmp_path: Path) -> None:
    """Schema breaks, bad payloads and oversize messages with a client_id are INVALID_REQUEST."""
    async with running_parts(tmp_path) as parts:
        client = parts.client
        await make_ready(parts)
        body = client.request("HealthCheck")
        del body["target"]
        assert (await client.call_body(body))["error"]["code"] == "INVALID_REQUEST"
        body = client.request("HealthCheck", deadline="not a time")
        assert (await client.call_body(body))["error"]["code"] == "INVALID_REQUEST"
        for operation, payload in (
            ("HealthCheck", {"x": 1}),
            ("UpdateConfig", {"changes": {}, "extra": True}),
            ("UpdateConfig", {"changes": "max_processes=1"}),
            ("GracefulShutdown", {"graceful_timeout_ms": 300_001}),
        ):
            answer = await client.call(operation, payload)
            assert (answer["status"], answer["error"]["code"]) == ("Error", "INVALID_REQUEST")
        big = client.request("HealthCheck", padding="y" * (1024 * 1024))
        answer = await client.call_body(big)
        assert answer["error"]["code"] == "INVALID_REQUEST"
        assert answer["request_id"] == big["request_id"]


async def test_unsupported_operation(tmp_path: Path) -> None:
    """An operation procmond does not serve is UNSUPPORTED_OPERATION."""
    async with running_parts(tmp_path) as parts:
        answer = await parts.client.call("Deregister", {})
        assert (answer["status"], answer["error"]["code"]) == ("Error", "UNSUPPORTED_OPERATION")


async def test_malformed_messages_are_dropped_and_counted(tmp_path: Path) -> None:
    """Unanswerable messages are counted in rpc_malformed_total; the service keeps serving."""
    async with running_parts(tmp_path) as parts:
        client = parts.client
        junk = [
            b"{",
            b'"a string"',
            json.dumps({"operation": "HealthCheck"}).encode(),
            json.dumps({"client_id": "UPPER"}).encode(),
            b'{"p": "' + b"z" * (1024 * 1024) + b'"}',  # oversized, no client_id
        ]
        for data in junk:
            await client.send(data)
        answer = await client.call("HealthCheck")
        assert answer["payload"]["metrics"]["rpc_malformed_total"] == 5
        assert client.on(RESPONSES) == [answer]


async def test_deadline_passed_on_arrival_is_not_executed(tmp_path: Path) -> None:
    """DEADLINE_EXCEEDED when the deadline had passed on arrival; the update is not applied."""
    async with running_parts(tmp_path) as parts:
        await make_ready(parts)
        past = (datetime.now(UTC) - timedelta(milliseconds=1)).isoformat()
        answer = await parts.client.call(
            "UpdateConfig", {"changes": {"max_processes": 4}}, deadline=past
        )
        assert (answer["status"], answer["error"]["code"]) == ("Timeout", "DEADLINE_EXCEEDED")
        assert parts.actor.config_version == 1


async def test_repeated_request_id_gets_the_first_answer_without_executing_again(
    tmp_path: Path,
) -> None:
    """A repeat of (client_id, request_id) is answered with the first answer, not re-executed."""
    async with running_parts(tmp_path) as parts:
        await make_ready(parts)
        client = parts.client
        first = await client.call(
            "UpdateConfig", {"changes": {"max_processes": 4}}, request_id="same"
        )
        assert first["payload"]["config_version"] == 2
        repeat = await client.call(
            "UpdateConfig", {"changes": {"max_processes": 8}}, request_id="same"
        )
        assert repeat == first
        assert parts.actor.config.max_processes == 4
        assert parts.actor.config_version == 2
        assert parts.collector.calls.count("update_settings") == 1


async def test_busy_timeout_and_one_at_a_time(tmp_path: Path) -> None:
    """While an update waits for a held cycle: one request queues, the next is BUSY; the update
    overruns its deadline (TIMEOUT) and the queued request is still served afterwards."""
    fake = FakeCollector()
    fake.gate.clear()
    async with running_parts(tmp_path, mailbox_size=1, collector=fake) as parts:
        await make_ready(parts)
        client = parts.client
        await fake.wait_entered()
        taken = parts.actor.mailbox.taken.value
        slow = asyncio.ensure_future(
            client.call("UpdateConfig", {"changes": {"max_processes": 4}}, deadline_s=0.3)
        )
        await parts.actor.mailbox.taken.reach(taken + 1)  # waiting at the cycle boundary
        queued = asyncio.ensure_future(client.call("HealthCheck"))
        await asyncio.sleep(0)
        busy = await client.call("HealthCheck")
        assert (busy["status"], busy["error"]["code"]) == ("Unavailable", "BUSY")
        assert busy["error"]["context"]["retry_after_ms"] > 0
        timed_out = await slow
        assert (timed_out["status"], timed_out["error"]["code"]) == ("Timeout", "TIMEOUT")
        served = await queued
        assert served["status"] == "Success"
        fake.gate.set()
        assert parts.actor.config_version == 1


async def test_update_config_answer_and_validation_failed(tmp_path: Path) -> None:
    """UpdateConfig answers {config_version, changed_fields, config}; bad values are refused."""
    async with running_parts(tmp_path) as parts:
        await make_ready(parts)
        client = parts.client
        ok = await client.call("UpdateConfig", {"changes": {"collection_interval_secs": 2}})
        assert ok["payload"]["changed_fields"] == ["collection_interval_secs"]
        assert ok["payload"]["config"]["collection_interval_secs"] == 2
        bad = await client.call("UpdateConfig", {"changes": {"collection_interval_secs": 3601}})
        assert (bad["status"], bad["error"]["code"]) == ("Error", "VALIDATION_FAILED")
        assert bad["error"]["category"] == "Configuration"
        assert bad["error"]["context"]["errors"][0]["field"] == "collection_interval_secs"


async def test_graceful_shutdown_is_answered_in_draining_before_deregister(tmp_path: Path) -> None:
    """The answer goes out while the collector is still draining (its `state` says so), and
    the Deregister request only after it (protocol section 6: answer, then deregister)."""
    async with running_parts(tmp_path) as parts:
        await make_ready(parts)
        answer = await parts.client.call("GracefulShutdown", {"graceful_timeout_ms": 5000})
        assert answer["status"] == "Success"
        assert answer["state"] == "draining"
        await parts.actor.entered[State.DEREGISTERED].reach(1)
        assert [r["operation"] for r in parts.agent.requests] == ["Register", "Deregister"]
        order = [
            m["state"] if channel.startswith("control.health.status.") else channel
            for channel, m in parts.client.received
            if not channel.startswith("control.health.heartbeat.")
        ]
        assert order == ["ready", "draining", RESPONSES, "deregistered"]
