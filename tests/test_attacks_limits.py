"""Issue 11's attacks on the limits of protocol section 10, replayed against a real
``procmond run`` and a private redis-server; each failed on the code before the limits.

* a 1,000,000-character ``correlation_id``, 300 times: echoed and cached before
  (RSS 50 -> 354 MB); now ``INVALID_REQUEST`` naming the field and its length,
  nothing echoed, the daemon's RSS flat;
* a deadline more than 300 s after the timestamp: ``INVALID_REQUEST``;
* one client pipelining 1,000 HealthChecks: the operator's request was ``BUSY``;
  now the flooder is held to a quarter of the mailbox and the operator served;
* a forged Register answer assigning a 1 ms heartbeat: now ignored, with a
  warning, and the collector's own interval used;
* a forged rejection message carrying a newline and a fake log line: now one
  log line, its newline escaped;
* a command line with an escape sequence and a newline: ``procmond watch``
  shows it escaped;
* UpdateConfig and GracefulShutdown: the log says which client asked.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from contract_agent import ContractAgent, envelope, rfc3339
from daemon_process import DaemonProcess
from e2e_support import daemon, new_id, running_agent
from reliability_support import rss_kib

from procmond.embedded import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

PROCMOND = (sys.executable, "-m", "procmond.cli")
#: A generous bound on RSS growth over the 300 oversized requests (the attack
#: before the limit grew it by ~300 MB): not a timing figure, a leak detector.
RSS_GROWTH_BOUND_KIB = 40 * 1024


@contextmanager
def named_child(argv0: str) -> Iterator[None]:
    """A child whose argv[0] is ``argv0`` (its shown command line starts with it)."""
    child = subprocess.Popen(
        [argv0, "-c", "import sys; sys.stdin.read()"],
        executable=sys.executable, stdin=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


async def _ready(cid: str, agent: ContractAgent) -> None:
    await agent.wait_for_state(cid, "ready", timeout=15)
    await agent.wait_listening(cid)


async def test_a_million_character_correlation_id_is_refused_not_echoed_nor_cached(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """300 requests with a 1,000,000-char correlation_id: INVALID_REQUEST, no echo, RSS flat."""
    cid = new_id()
    async with running_agent(fresh_redis.url) as agent:
        with daemon(tmp_path, fresh_redis.url, cid) as proc:
            await _ready(cid, agent)
            before = rss_kib(proc.pid)
            huge = "c" * 1_000_000
            sizes: list[int] = []
            for _ in range(300):
                request_id = uuid.uuid4().hex
                answer = await agent.call(
                    cid, "HealthCheck", None, request_id=request_id,
                    extra={"correlation_id": huge},
                )  # fmt: skip
                sizes.append(len(json.dumps(answer)))
                assert answer["status"] == "Error"
                assert answer["error"]["code"] == "INVALID_REQUEST"
                assert answer["request_id"] == request_id
                assert answer["correlation_id"] == request_id  # not the 1,000,000 characters
                (wrong,) = answer["error"]["context"]["errors"]
                assert wrong["field"] == "correlation_id"
                assert (wrong["length"], wrong["limit"]) == (1_000_000, 128)
            grown = rss_kib(proc.pid) - before
            assert max(sizes) < 4096, max(sizes)
            assert grown < RSS_GROWTH_BOUND_KIB, f"RSS grew by {grown} KiB"
            # A 128-character correlation_id is still echoed.
            edge = "e" * 128
            answer = await agent.call(cid, "HealthCheck", None, extra={"correlation_id": edge})
            assert (answer["status"], answer["correlation_id"]) == ("Success", edge)


async def test_a_deadline_more_than_300_s_after_the_timestamp_is_invalid(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """deadline - timestamp > 300 s: INVALID_REQUEST naming the deadline; 300 s is served."""
    cid = new_id()
    async with running_agent(fresh_redis.url) as agent:
        with daemon(tmp_path, fresh_redis.url, cid):
            await _ready(cid, agent)
            now = datetime.now(UTC)
            far = await agent.call(
                cid, "UpdateConfig", {"changes": {"max_processes": 1}},
                deadline=now + timedelta(seconds=3600),
            )  # fmt: skip
            assert far["error"]["code"] == "INVALID_REQUEST", far
            (wrong,) = far["error"]["context"]["errors"]
            assert wrong["field"] == "deadline"
            assert wrong["limit_s"] == 300
            near = await agent.call(cid, "HealthCheck", None, deadline=now + timedelta(seconds=299))
            assert near["status"] == "Success"
            health = await agent.call(cid, "HealthCheck", None)
            assert health["payload"]["config"]["max_processes"] != 1  # nothing executed


async def test_one_client_pipelining_1000_health_checks_does_not_starve_the_operator(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """The flooder gets BUSY past a quarter of the mailbox; the operator's request is served."""
    cid = new_id()
    async with (
        running_agent(fresh_redis.url) as agent,
        ContractAgent(fresh_redis.url, client_id="flooder") as flooder,
        ContractAgent(fresh_redis.url, client_id="operator") as operator,
    ):
        with daemon(tmp_path, fresh_redis.url, cid):
            await _ready(cid, agent)
            target = f"control.collector.{cid}"
            flood = [
                json.dumps(
                    envelope("HealthCheck", None, client_id="flooder", target=target, timeout=30)
                )
                for _ in range(1000)
            ]
            mine = envelope("HealthCheck", None, client_id="operator", target=target, timeout=30)
            # One pipeline: the 1,000 arrive before the operator's, back to back.
            pipe = flooder.redis.pipeline(transaction=False)
            for data in flood:
                pipe.publish(target, data)
            pipe.publish(target, json.dumps(mine))
            answer_task = asyncio.create_task(
                operator.responses.wait(lambda items: len(items) >= 1, timeout=30)
            )
            await pipe.execute()
            await answer_task
            answer = operator.responses.items[0].message
            assert answer["request_id"] == mine["request_id"]
            assert answer["status"] == "Success", answer
            await flooder.responses.wait(lambda items: len(items) >= 1000, timeout=60)
            statuses = [r.message["status"] for r in flooder.responses.items]
            busy = [r.message for r in flooder.responses.items if r.message["status"] != "Success"]
            assert statuses.count("Success") >= 25  # its share was served
            assert busy, "the flooder was never held to its share"
            for refused in busy:
                assert refused["error"]["code"] == "BUSY"
                assert refused["error"]["context"]["retry_after_ms"] > 0


async def test_a_forged_1_ms_heartbeat_interval_is_ignored(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """An Accepted answer assigning 1 ms: warned about, the collector's own 500 ms in force."""
    cid = new_id()
    # The answer any Redis client could forge: Accepted, heartbeat_interval_ms 1.
    async with running_agent(fresh_redis.url, heartbeat_interval_ms=1) as agent:
        proc = DaemonProcess(
            tmp_path / "data", redis_url=fresh_redis.url, collector_id=cid,
            heartbeat_interval_ms=500,
        )  # fmt: skip
        with proc:
            ready = await agent.wait_for_state(cid, "ready", timeout=15)
            assert ready["heartbeat_interval_ms"] == 500
            beats = await agent.wait_for_heartbeats(cid, 2, timeout=10)
            assert [b.message["sequence"] for b in beats[:2]] == [1, 2]
            health = await agent.call(cid, "HealthCheck", None)
            # Before the fix, ~400 heartbeats a second: by the time two arrived and a
            # HealthCheck was answered, hundreds had been sent.
            assert health["payload"]["metrics"]["heartbeats_sent"] < 100
            warnings = [
                r for r in proc.log_records() if "heartbeat interval of 1 ms" in r["message"]
            ]
            assert warnings, proc.stderr_text()[-2000:]
            assert warnings[0]["level"] == "warning"


async def test_a_forged_rejection_message_cannot_forge_a_log_line(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """A Rejected answer whose message holds a newline and a fake log line stays one line."""
    cid = new_id()
    forged = "nope\n12:00:00 ERROR   procmond.rpc: FORGED \x1b[31mline\u202e"
    async with running_agent(fresh_redis.url, register_mode="ignore") as agent:
        proc = DaemonProcess(
            tmp_path / "data", redis_url=fresh_redis.url, collector_id=cid,
            extra_args=("--log-format", "text", "--registration-attempts", "1"),
        )  # fmt: skip
        with proc:
            (register,) = await agent.wait_for_registers(1, timeout=15)
            request = register.message
            answer = {
                "request_id": request["request_id"],
                "correlation_id": request["request_id"],
                "operation": "Register",
                "service_id": "agent",
                "status": "Success",
                "payload": {"status": "Rejected", "message": forged, "heartbeat_interval_ms": None},
                "error": None,
                "state": "ready",
                "timestamp": rfc3339(datetime.now(UTC)),
                "queue_time_ms": 0,
                "execution_time_ms": 0,
                "total_time_ms": 0,
            }
            await agent.redis.publish(f"control.rpc.response.{cid}", json.dumps(answer))
            assert await proc.wait_async(30) == 4  # gave up after its one attempt
            text = proc.stderr_text()
            lines = text.splitlines()
            assert not any(line.startswith("12:00:00 ERROR") for line in lines), text
            assert "\x1b" not in text
            assert "\u202e" not in text
            (rejected,) = [line for line in lines if "rejected by the agent" in line]
            assert "nope\\x0a12:00:00 ERROR" in rejected
            assert "\\x1b[31mline\\u202e" in rejected


async def test_update_config_and_shutdown_log_the_client_who_asked(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """Each UpdateConfig and GracefulShutdown is logged at INFO with the caller's client_id."""
    cid = new_id()
    async with (
        running_agent(fresh_redis.url) as agent,
        ContractAgent(fresh_redis.url, client_id="ops-7") as operator,
    ):
        with daemon(tmp_path, fresh_redis.url, cid) as proc:
            await _ready(cid, agent)
            changed = await operator.call(cid, "UpdateConfig", {"changes": {"max_processes": 5000}})
            assert changed["status"] == "Success", changed
            done = await operator.call(
                cid, "GracefulShutdown", {"reason": "patch\nnight", "graceful_timeout_ms": 5000},
                timeout=20,
            )  # fmt: skip
            assert done["status"] == "Success", done
            assert await proc.wait_async(15) == 0
            infos = [r["message"] for r in proc.log_records() if r["level"] == "info"]
            update = [m for m in infos if m.startswith("UpdateConfig from client ops-7 ")]
            assert update, infos
            assert "max_processes=5000" in update[0]
            shutdown = [m for m in infos if m.startswith("GracefulShutdown from client ops-7 ")]
            assert shutdown, infos
            assert "patch\\nnight" in shutdown[0]


async def test_watch_shows_a_command_line_with_control_characters_escaped(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """A process whose argv holds ESC, BEL, a newline and a bidi override: watch escapes them."""
    cid = new_id()
    url = fresh_redis.url
    marker = f"mark-{cid}"
    hostile = f"{marker}\x1b]0;pwned\x07\nFAKE\u202etxt.sh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCMOND_")}
    watcher = await asyncio.create_subprocess_exec(
        *PROCMOND, "watch", "--redis-url", url,
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert watcher.stdout is not None
    seen: list[bytes] = []

    async def until(needle: bytes) -> bytes:
        assert watcher.stdout is not None
        async with asyncio.timeout(30):
            while True:
                line = await watcher.stdout.readline()
                assert line, "watch ended early"
                seen.append(line)
                if needle in line:
                    return line

    try:
        async with running_agent(url) as agent:
            with daemon(tmp_path, url, cid):
                await _ready(cid, agent)
                await until(b"heartbeat #")  # watch is connected and tailing
                with named_child(hostile):
                    line = await until(marker.encode())
    finally:
        watcher.terminate()
        await watcher.wait()
    text = b"".join(seen)
    assert b"\x1b" not in text
    assert b"\x07" not in text
    assert "\u202e".encode() not in text
    assert b"\\x1b]0;pwned\\x07\\x0aFAKE\\u202etxt.sh" in line


def test_identifier_with_a_trailing_newline_is_refused_by_the_cli(tmp_path: Path) -> None:
    """``procmond run --collector-id "web-01\\n"`` is an invalid setting (exit 2)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCMOND_")}
    result = subprocess.run(
        [*PROCMOND, "run", "--collector-id", "web-01\n", "--data-dir", str(tmp_path / "d"),
         "--redis-url", "redis://127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
