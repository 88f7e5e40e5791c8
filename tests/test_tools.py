"""The operator tools against a real daemon on a real redis-server: ctl, watch, demo,
systemd notifications, and the reference agent's accounting of a paused collector.

Every wait is bounded; nothing sleeps a fixed time; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from daemon_process import DaemonProcess
from e2e_support import churn_child, daemon, new_id, running_agent
from redis.asyncio import Redis

from procmond.agent.service import Agent, AgentEvent, EventKind, Tracker
from procmond.bus.redis import RedisBus
from procmond.ctl import (
    EXIT_ERROR,
    EXIT_NO_REDIS,
    EXIT_NO_RESPONDER,
    EXIT_SUCCESS,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
)
from procmond.embedded import RedisServer
from procmond.watch import describe_control, describe_event, in_seq_order

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

PROCMOND = [sys.executable, "-m", "procmond.cli"]


async def procmond(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run a ``procmond`` command; (exit status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCMOND_")}
    proc = await asyncio.create_subprocess_exec(
        *PROCMOND, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ctl_drives_a_full_lifecycle(tmp_path: Path, redis_server: RedisServer) -> None:
    """health, config (valid, invalid, validate-only) and shutdown through ctl alone, exit 0."""
    cid = new_id()
    url = redis_server.url
    ctl = ("ctl",)
    target = ("--redis-url", url, "--collector", cid)
    async with running_agent(url) as agent:
        with daemon(tmp_path, url, cid) as proc:
            await agent.wait_for_state(cid, "ready", timeout=15)
            code, out, _ = await procmond(*ctl, "health", *target)
            assert code == EXIT_SUCCESS
            assert f"{cid} on " in out
            assert "state ready" in out
            assert re.search(
                r"capture mode (kernel|cycle), kernel events \d+ \(\d+ lost, \d+ partial\)", out
            ), out
            code, out, _ = await procmond(*ctl, "health", "--json", *target)
            assert code == EXIT_SUCCESS
            health = json.loads(out)
            assert health["status"] == "Success"
            assert health["payload"]["collector_id"] == cid
            code, out, _ = await procmond(
                *ctl, "config", "max_processes=5", "--validate-only", *target
            )
            assert code == EXIT_SUCCESS
            assert "config version 1" in out
            code, out, _ = await procmond(*ctl, "config", "collection_interval_secs=2", *target)
            assert code == EXIT_SUCCESS
            assert "config version 2; changed: collection_interval_secs" in out
            code, out, _ = await procmond(*ctl, "config", "max_processes=lots", *target)
            assert code == EXIT_ERROR
            assert "VALIDATION_FAILED" in out
            assert "max_processes" in out
            code, out, _ = await procmond(*ctl, "shutdown", "--reason", "ctl test", *target)
            assert code == EXIT_SUCCESS
            assert "drained in" in out
            assert await proc.wait_async(15) == 0
            deregister = await agent.wait_for_deregister(timeout=5)
            assert deregister["payload"]["reason"] == "ctl test"


async def test_ctl_reports_no_responder_without_waiting(redis_server: RedisServer) -> None:
    """A collector nobody serves fails at once (exit 5), not after --timeout."""
    code, _, err = await procmond(
        "ctl", "health", "--redis-url", redis_server.url, "--collector", new_id(),
        "--timeout", "120", timeout=20,
    )  # fmt: skip
    assert code == EXIT_NO_RESPONDER
    assert "no collector listening on control.collector." in err


async def test_ctl_reports_no_redis(tmp_path: Path) -> None:
    """No --redis-url and no embedded Redis in the data directory: exit 6 with a hint."""
    code, _, err = await procmond("ctl", "health", "--data-dir", str(tmp_path / "none"))
    assert code == EXIT_NO_REDIS
    assert "no Redis found" in err


@contextlib.asynccontextmanager
async def fake_collector(url: str, collector_id: str, status: str | None) -> AsyncIterator[None]:
    """A responder answering every request to the collector with ``status`` (None: silent)."""
    client = Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"control.collector.{collector_id}")

    async def serve() -> None:
        async for message in pubsub.listen():
            if message["type"] != "message" or status is None:
                continue
            request = json.loads(message["data"])
            error = None if status == "Success" else {
                "code": {"Error": "INVALID_STATE", "Timeout": "TIMEOUT"}.get(status, "BUSY"),
                "message": "scripted", "category": "Resource", "context": {},
            }  # fmt: skip
            response = {
                "request_id": request["request_id"], "correlation_id": request["request_id"],
                "operation": request["operation"], "service_id": collector_id, "status": status,
                "payload": {} if error is None else None, "error": error, "state": "ready",
                "timestamp": request["timestamp"], "queue_time_ms": 0, "execution_time_ms": 0,
                "total_time_ms": 0,
            }  # fmt: skip
            await client.publish(
                f"control.rpc.response.{request['client_id']}", json.dumps(response)
            )

    task = asyncio.create_task(serve())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        await client.aclose()


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("Success", EXIT_SUCCESS),
        ("Error", EXIT_ERROR),
        ("Timeout", EXIT_TIMEOUT),
        ("Unavailable", EXIT_UNAVAILABLE),
        (None, EXIT_TIMEOUT),
    ],
)
async def test_ctl_exit_status_for_each_response_status(
    redis_server: RedisServer, status: str | None, expected: int
) -> None:
    """Each response status maps to its documented exit status; silence is a timeout."""
    cid = new_id()
    async with fake_collector(redis_server.url, cid, status):
        code, _, _ = await procmond(
            "ctl", "health", "--json", "--redis-url", redis_server.url, "--collector", cid,
            "--timeout", "1",
        )  # fmt: skip
    assert code == expected


async def test_watch_prints_control_messages_and_events(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """watch --json shows heartbeats from the control topics and new stream entries."""
    cid = new_id()
    url = redis_server.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCMOND_")}
    watcher = await asyncio.create_subprocess_exec(
        *PROCMOND, "watch", "--json", "--redis-url", url,
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert watcher.stdout is not None
    seen_heartbeat = seen_event = False
    try:
        async with running_agent(url) as agent:
            with daemon(tmp_path, url, cid):
                await agent.wait_for_state(cid, "ready", timeout=15)
                # watch tails the streams from their end as it connects (maybe after
                # the baseline): once it shows a heartbeat it is connected, and a
                # child started then is news it must show.
                async with asyncio.timeout(20):
                    while not seen_heartbeat:
                        line = json.loads(await watcher.stdout.readline())
                        if line["topic"] == f"control.health.heartbeat.{cid}":
                            seen_heartbeat = line["message"]["collector_id"] == cid
                with churn_child(f"watch-{cid}"):
                    async with asyncio.timeout(20):
                        while not seen_event:
                            line = json.loads(await watcher.stdout.readline())
                            if line["topic"].startswith("events.process.") and (
                                line["collector_id"] == cid
                            ):
                                # a partial exec (the process already gone) has no command line
                                seen_event = f"watch-{cid}" in (line["event"]["cmdline"] or [])
    finally:
        watcher.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            assert await watcher.wait() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the kernel's process events need root")
async def test_watch_shows_exec_events_with_their_source_and_exit(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """watch (text) shows the capture mode in heartbeats, a program's exec like a start (pid,
    ppid, name, user, source=kernel, command line), and its kernel stop's exit and signal."""
    cid = new_id()
    url = redis_server.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCMOND_")}
    watcher = await asyncio.create_subprocess_exec(
        *PROCMOND, "watch", "--redis-url", url, stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert watcher.stdout is not None
    stdout = watcher.stdout

    async def line_with(*needles: str) -> str:
        async with asyncio.timeout(20):
            while True:
                line = (await stdout.readline()).decode()
                assert line, "watch ended early"
                if all(needle in line for needle in needles):
                    return line

    marker = f"exec-{cid}"
    try:
        async with running_agent(url) as agent:
            # One cycle only (the baseline): every later start, exec and stop is the kernel's.
            with DaemonProcess(tmp_path / "data", redis_url=url, collector_id=cid, interval=3600):
                await agent.wait_for_state(cid, "ready", timeout=15)
                # Once watch shows a heartbeat it tails the streams: what runs now is news.
                heartbeat = await line_with(f"control.health.heartbeat.{cid} ")
                assert " capture=kernel" in heartbeat
                # sh waits for its sleep: alive, so its exec is read whole (not partial).
                child = subprocess.Popen(  # noqa: ASYNC220 - ended and reaped below, bounded
                    ["sh", "-c", "sleep 60; :", marker], start_new_session=True
                )
                try:
                    pid = f" {cid} pid={child.pid} "
                    execed = await line_with("events.process.exec ", pid, " source=kernel ")
                    assert (
                        f" user={getpass.getuser()} source=kernel cmd=sh -c sleep 60; : " in execed
                    )
                    assert execed.rstrip().endswith(marker)
                    assert " partial" not in execed
                finally:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait(10)
                stopped = await line_with("events.process.stop ", pid)
                assert " source=kernel exit=137 signal=SIGKILL cmd=sh -c sleep 60; : " in stopped
    finally:
        watcher.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            assert await watcher.wait() == 0


def test_watch_shows_one_read_in_seq_order_per_collector() -> None:
    """XREAD answers stream by stream; watch shows each collector's entries in seq order, so a
    process's start, exec and stop read together are shown in the order they happened."""
    batch = [
        ("events.process.start", "5-0", {"collector_id": "b", "seq": "9"}),
        ("events.process.start", "5-1", {"collector_id": "a", "seq": "10"}),
        ("events.process.stop", "5-0", {"collector_id": "a", "seq": "12"}),
        ("events.process.exec", "5-0", {"collector_id": "a", "seq": "11"}),
        ("events.process.exec", "5-1", {"collector_id": "b", "seq": "8"}),
    ]
    ordered = [(e[2]["collector_id"], e[2]["seq"], e[0]) for e in in_seq_order(batch)]
    assert ordered == [
        ("a", "10", "events.process.start"),
        ("a", "11", "events.process.exec"),
        ("a", "12", "events.process.stop"),
        ("b", "8", "events.process.exec"),
        ("b", "9", "events.process.start"),
    ]


def test_watch_describes_partial_events_signals_and_capture_losses() -> None:
    """A partial exec shows `partial` and `?` for what could not be read; a cycle's stop no
    exit; a v1 event no source; a heartbeat its capture mode and kernel losses."""

    def line(stream: str, **event: Any) -> str:
        fields = {"seq": "7", "collector_id": "c1", "event": json.dumps(event)}
        return describe_event(f"events.process.{stream}", "1-0", fields)

    partial = line(
        "exec", pid=5, ppid=1, name=None, username=None, cmdline=None, source="kernel",
        partial=True,
    )  # fmt: skip
    assert (
        partial == "events.process.exec  seq=7 c1 pid=5 ppid=1 ? user=? source=kernel partial cmd=?"
    )
    assert line(
        "stop", pid=5, ppid=1, name="sleep", username="u", cmdline=["sleep", "9"],
        source="kernel", partial=False, exit_code=143, exit_signal=15,
    ).endswith(" user=u source=kernel exit=143 signal=SIGTERM cmd=sleep 9")  # fmt: skip
    assert line(
        "stop", pid=5, ppid=1, name="sleep", username="u", cmdline=["sleep", "9"],
        source="kernel", partial=False, exit_code=3, exit_signal=0,
    ).endswith(" source=kernel exit=3 cmd=sleep 9")  # fmt: skip
    assert line(
        "stop", pid=5, ppid=1, name="sleep", username="u", cmdline=["sleep", "9"],
        source="cycle", partial=False, exit_code=None, exit_signal=None,
    ).endswith(" user=u source=cycle cmd=sleep 9")  # fmt: skip
    assert line(
        "start", pid=5, ppid=1, name="sleep", username="u", cmdline=["sleep", "9"], baseline=True
    ).endswith(" user=u baseline cmd=sleep 9")
    beat = {
        "sequence": 4, "state": "ready", "health_status": "Degraded",
        "reasons": ["kernel dropped process events (3 so far); resynced"],
        "metrics": {"processes_collected": 9, "events_published": 20, "buffer_level_percent": 0.0,
                    "connection_status": "Connected", "capture_mode": "kernel",
                    "kernel_events": 50, "kernel_events_lost": 3, "partial_events": 1},
    }  # fmt: skip
    text = describe_control("control.health.heartbeat.c1", json.dumps(beat).encode())
    assert text.endswith("bus=Connected capture=kernel kernel_lost=3")
    assert "(kernel dropped process events (3 so far); resynced)" in text


async def test_systemd_notifications(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under NOTIFY_SOCKET: READY=1 on ready, WATCHDOG=1, STOPPING=1 on draining, STATUS lines."""
    cid = new_id()
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    loop = asyncio.get_running_loop()
    received: list[str] = []

    async def until(needle: str) -> None:
        async with asyncio.timeout(15):
            while not any(needle in m for m in received):
                received.append((await loop.sock_recv(sock, 4096)).decode())

    try:
        async with running_agent(redis_server.url) as agent:
            with daemon(tmp_path, redis_server.url, cid) as proc:
                await until("READY=1")
                await agent.wait_for_state(cid, "ready", timeout=15)
                await until("WATCHDOG=1")
                proc.signal(signal.SIGTERM)
                await until("STOPPING=1")
                await until("STATUS=deregistered")
                assert await proc.wait_async(15) == 0
    finally:
        sock.close()
    ready = next(m for m in received if "READY=1" in m)
    assert "STATUS=ready" in ready
    assert any(m.startswith("STATUS=registering") for m in received)


async def test_agent_accounts_for_a_paused_collector(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """SIGSTOP makes the reference agent report late then failed; SIGCONT, recovered."""
    cid = new_id()
    url = redis_server.url
    events: list[AgentEvent] = []
    changed = asyncio.Event()

    def on_events(batch: list[AgentEvent]) -> None:
        events.extend(e for e in batch if e.collector_id == cid)
        changed.set()

    async def wait_for(kind: EventKind) -> None:
        async with asyncio.timeout(15):
            while not any(e.kind is kind for e in events):
                changed.clear()
                await changed.wait()

    bus = RedisBus(url, name="test-agent")
    agent = Agent(bus, Tracker(assigned_interval_ms=200), on_events=on_events)
    stop = asyncio.Event()
    await agent.start()
    await bus.start()
    runner = asyncio.create_task(agent.run(stop, tick_s=0.05))
    try:
        with daemon(tmp_path, url, cid) as proc:
            await wait_for(EventKind.REGISTERED)
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                await wait_for(EventKind.LATE)
                await wait_for(EventKind.FAILED)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            await wait_for(EventKind.RECOVERED)
            proc.signal(signal.SIGTERM)
            await wait_for(EventKind.DEREGISTERED)
            assert await proc.wait_async(15) == 0
        lost = [e for e in events if e.kind is EventKind.LOST_HEARTBEATS]
        assert lost == []  # a paused collector numbers no heartbeats: no gap
    finally:
        stop.set()
        await runner
        await agent.close()
        await bus.close()


async def test_demo_shows_the_stack_and_drains_on_ctrl_c(tmp_path: Path) -> None:
    """procmond demo: embedded Redis, agent, ready, heartbeats, baseline; Ctrl-C exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCMOND_")}
    demo = await asyncio.create_subprocess_exec(
        *PROCMOND, "demo", "--data-dir", str(tmp_path / "demo"), "--interval", "1",
        "--heartbeat-interval-ms", "1000",
        stdout=asyncio.subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip
    assert demo.stdout is not None
    lines: list[str] = []
    wanted = ["is ready", "heartbeat #2", "baseline of", "demo | capture mode ", " capture="]

    async def until(needles: list[str]) -> None:
        async with asyncio.timeout(30):
            while not all(any(n in line for line in lines) for n in needles):
                line = await demo.stdout.readline()  # type: ignore[union-attr]
                assert line, "demo ended early:\n" + "".join(lines)
                lines.append(line.decode())

    try:
        await until(wanted)
        # A terminal's Ctrl-C goes to the whole foreground process group.
        os.killpg(demo.pid, signal.SIGINT)
        await until(["is deregistered", "exited with status 0"])
        async with asyncio.timeout(15):
            assert await demo.wait() == 0
    finally:
        if demo.returncode is None:
            os.killpg(demo.pid, signal.SIGKILL)
            await demo.wait()
