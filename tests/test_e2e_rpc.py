"""End to end: every error code of protocol section 4 over the wire, and the acceptance table.

One ``procmond run`` per test against its own redis-server; the contract agent
sends the requests. INTERNAL is not reachable from outside (it needs a bug);
the unit tests trigger it with a failing fake collector.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from contract_agent import ContractAgent, envelope, seq_report
from e2e_support import daemon, new_id, poll, running_agent

from procmond.embedded import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def request_bytes(agent: ContractAgent, cid: str, operation: str, payload: Any, **kw: Any) -> bytes:
    """A request envelope as bytes."""
    body = envelope(
        operation, payload, client_id=agent.client_id, target=f"control.collector.{cid}", **kw
    )
    return json.dumps(body).encode()


def answered_in(state: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate: the response was given in ``state``."""
    return lambda response: bool(response["state"] == state)


async def test_every_error_code_over_the_wire(tmp_path: Path, fresh_redis: RedisServer) -> None:
    """INVALID_REQUEST, UNSUPPORTED_OPERATION, DEADLINE_EXCEEDED, VALIDATION_FAILED, BUSY,
    malformed drops and repeated request ids, against a ready collector."""
    cid = new_id()
    async with running_agent(fresh_redis.url) as agent:
        with daemon(tmp_path, fresh_redis.url, cid) as proc:
            await agent.wait_for_state(cid, "ready", timeout=15)

            # INVALID_REQUEST: envelope breaks the schema (no deadline).
            bad = await agent.call(
                cid, "HealthCheck", None, request_id="no-deadline", drop=["deadline"]
            )
            assert (bad["status"], bad["error"]["code"]) == ("Error", "INVALID_REQUEST")
            assert bad["request_id"] == "no-deadline"
            # ... an unparseable timestamp,
            bad = await agent.call(cid, "HealthCheck", None, extra={"timestamp": "yesterday"})
            assert bad["error"]["code"] == "INVALID_REQUEST"
            # ... a payload HealthCheck does not take, a GracefulShutdown timeout out of range.
            bad = await agent.call(cid, "HealthCheck", {"verbose": True})
            assert bad["error"]["code"] == "INVALID_REQUEST"
            bad = await agent.call(cid, "GracefulShutdown", {"graceful_timeout_ms": 5})
            assert bad["error"]["code"] == "INVALID_REQUEST"
            assert bad["state"] == "ready"
            bad = await agent.call(cid, "UpdateConfig", None)
            assert bad["error"]["code"] == "INVALID_REQUEST"
            # ... over 1 MiB, with a client_id to answer to.
            big_id = "big-" + uuid.uuid4().hex
            big = json.dumps(
                {
                    "request_id": big_id,
                    "client_id": agent.client_id,
                    "operation": "HealthCheck",
                    "padding": "x" * (1024 * 1024 + 10),
                }
            ).encode()
            bad = await agent.call_raw(cid, big, big_id)
            assert (bad["status"], bad["error"]["code"]) == ("Error", "INVALID_REQUEST")

            # UNSUPPORTED_OPERATION
            bad = await agent.call(cid, "Reboot", None)
            assert (bad["status"], bad["error"]["code"]) == ("Error", "UNSUPPORTED_OPERATION")
            bad = await agent.call(cid, "Register", None)
            assert bad["error"]["code"] == "UNSUPPORTED_OPERATION"

            # DEADLINE_EXCEEDED: the deadline had passed on arrival; nothing executed.
            past = datetime.now(UTC) - timedelta(seconds=1)
            late = await agent.call(
                cid, "UpdateConfig", {"changes": {"max_processes": 3}}, deadline=past
            )
            assert (late["status"], late["error"]["code"]) == ("Timeout", "DEADLINE_EXCEEDED")
            health = await agent.call(cid, "HealthCheck", None)
            assert health["payload"]["config"]["max_processes"] == 0
            assert health["payload"]["config_version"] == 1

            # VALIDATION_FAILED
            bad = await agent.call(cid, "UpdateConfig", {"changes": {"max_processes": -1}})
            assert (bad["status"], bad["error"]["code"]) == ("Error", "VALIDATION_FAILED")
            assert bad["error"]["context"]["errors"][0]["field"] == "max_processes"

            # Repeated request_id: the first answer again, not executed twice.
            first = await agent.call(
                cid, "UpdateConfig", {"changes": {"max_processes": 10}}, request_id="upd-a"
            )
            second = await agent.call(cid, "UpdateConfig", {"changes": {"max_processes": 20}})
            assert second["payload"]["config_version"] == 3
            repeat = await agent.call(
                cid, "UpdateConfig", {"changes": {"max_processes": 10}}, request_id="upd-a"
            )
            assert repeat == first
            health = await agent.call(cid, "HealthCheck", None)
            assert health["payload"]["config"]["max_processes"] == 20
            assert health["payload"]["config_version"] == 3

            # Malformed: not JSON, not an object, no client_id, a bad client_id: dropped, counted.
            before = health["payload"]["metrics"]["rpc_malformed_total"]
            for junk in (
                b"not json at all",
                b"[1, 2, 3]",
                json.dumps({"request_id": "x", "operation": "HealthCheck"}).encode(),
                json.dumps({"request_id": "x", "client_id": "Bad Id!"}).encode(),
                b"\xff\xfe",
            ):
                assert await agent.publish_raw(cid, junk) == 1
            health = await poll(
                lambda: agent.call(cid, "HealthCheck", None),
                lambda h: h["payload"]["metrics"]["rpc_malformed_total"] >= before + 5,
                timeout=10,
            )
            assert health["payload"]["metrics"]["rpc_malformed_total"] == before + 5
            assert proc.returncode is None

            # BUSY: a burst larger than the mailbox (100) arrives before the actor runs.
            ids = [f"flood-{i}" for i in range(400)]
            pipe = agent.redis.pipeline(transaction=False)
            for request_id in ids:
                pipe.publish(
                    f"control.collector.{cid}",
                    request_bytes(agent, cid, "HealthCheck", None, request_id=request_id),
                )
            await pipe.execute()
            await agent.responses.wait(
                lambda items: len({r.message["request_id"] for r in items} & set(ids)) == len(ids),
                timeout=20,
            )
            flood = [r.message for r in agent.responses.items if r.message["request_id"] in ids]
            busy = [r for r in flood if r["error"] and r["error"]["code"] == "BUSY"]
            served = [r for r in flood if r["status"] == "Success"]
            assert busy, "a 400-request burst should overflow a 100-message mailbox"
            assert served
            assert busy[0]["status"] == "Unavailable"
            assert busy[0]["error"]["context"]["retry_after_ms"] > 0
            assert (await agent.call(cid, "HealthCheck", None))["status"] == "Success"


async def test_registering_and_unregistered_accept_table(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """While unregistered (Register rejected) and registering (Register ignored): HealthCheck
    served, UpdateConfig INVALID_STATE with {state, operation, accepted}, GracefulShutdown
    served; never accepted, so no Deregister."""
    cid = new_id()
    async with running_agent(fresh_redis.url, register_mode="reject") as agent:
        with daemon(tmp_path, fresh_redis.url, cid) as proc:
            # Its request topic is subscribed before the first Register goes out.
            await agent.wait_for_registers(1, timeout=15)

            async def update() -> dict[str, Any]:
                return await agent.call(cid, "UpdateConfig", {"changes": {"max_processes": 1}})

            for state in ("unregistered", "registering"):
                refused = await poll(update, answered_in(state), timeout=15)
                assert (refused["status"], refused["error"]["code"]) == ("Error", "INVALID_STATE")
                assert refused["error"]["context"] == {
                    "state": state,
                    "operation": "UpdateConfig",
                    "accepted": ["HealthCheck", "GracefulShutdown"],
                }
                health = await agent.call(cid, "HealthCheck", None)
                assert health["status"] == "Success"
                assert health["payload"]["status"] == "Degraded"
                # From now on Register is ignored: the next attempt stays registering 10 s.
                agent.register_mode = "ignore"

            shutdown = await agent.call(
                cid, "GracefulShutdown", {"reason": "never registered"}, timeout=20
            )
            assert shutdown["status"] == "Success"
            assert shutdown["payload"]["complete"] is True
            assert await proc.wait_async(15) == 0
            # Never accepted: no Deregister is owed.
            assert agent.deregisters.items == []
            assert "ready" not in agent.states(cid)


async def test_draining_refuses_and_times_out_while_streams_refuse_writes(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """With XADD refused (WRONGTYPE) the drain cannot finish: meanwhile HealthCheck is served,
    UpdateConfig and a second GracefulShutdown get SHUTTING_DOWN, a short deadline TIMEOUT;
    the drain ends incomplete, exit 0, and the next start replays the log without a gap."""
    cid = new_id()
    async with running_agent(fresh_redis.url) as agent:
        # A key of the wrong type: every XADD to it is refused by the server.
        await agent.redis.set("events.process.start", "not a stream")
        with daemon(tmp_path, fresh_redis.url, cid) as proc:
            await agent.wait_for_state(cid, "ready", timeout=15)
            health = await poll(
                lambda: agent.call(cid, "HealthCheck", None),
                lambda h: h["payload"]["metrics"]["wal_pending"] > 0,
                timeout=10,
            )
            assert proc.returncode is None, proc.tail()
            assert health["payload"]["metrics"]["events_published"] == 0

            soon = datetime.now(UTC) + timedelta(milliseconds=500)
            first_shutdown = asyncio.create_task(
                agent.call(
                    cid,
                    "GracefulShutdown",
                    {"reason": "streams refused", "graceful_timeout_ms": 3000},
                    deadline=soon,
                    timeout=10,
                )
            )
            await agent.wait_for_state(cid, "draining", timeout=10)
            health = await agent.call(cid, "HealthCheck", None)
            assert health["status"] == "Success"
            assert health["state"] == "draining"
            assert health["payload"]["status"] == "Unhealthy"
            for operation, payload in (
                ("UpdateConfig", {"changes": {"max_processes": 1}}),
                ("GracefulShutdown", None),
            ):
                refused = await agent.call(cid, operation, payload)
                assert (refused["status"], refused["error"]["code"]) == (
                    "Unavailable",
                    "SHUTTING_DOWN",
                ), refused
                assert refused["state"] == "draining"
            timed_out = await first_shutdown
            assert (timed_out["status"], timed_out["error"]["code"]) == ("Timeout", "TIMEOUT")
            deregister = await agent.wait_for_deregister(timeout=15)
            assert deregister["payload"]["wal_pending"] > 0
            await agent.wait_for_state(cid, "deregistered", timeout=10)
            assert await proc.wait_async(15) == 0
            assert "left in the log" in proc.stderr_text()

        # The world is fixed; the next start replays what was left.
        await agent.redis.delete("events.process.start")
        with daemon(tmp_path, fresh_redis.url, cid) as proc:
            await agent.wait_for_state(cid, "ready", count=2, timeout=15)
            await proc.wait_for_output("replaying")
            await poll(
                lambda: agent.call(cid, "HealthCheck", None),
                lambda h: (
                    h["payload"]["metrics"]["wal_pending"] == 0
                    and h["payload"]["metrics"]["events_published"] > 0
                ),
                timeout=15,
            )
            report = seq_report(await agent.read_events(cid))
            assert report.first == 1
            assert report.missing == []
