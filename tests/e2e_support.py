"""Shared pieces of the end-to-end tests: fixtures, child processes for churn, waits."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from contract_agent import ContractAgent, NotListeningError, RegisterMode
from daemon_process import DaemonProcess

T = TypeVar("T")

HEALTH_FIELDS = {
    "collector_id",
    "boot_id",
    "state",
    "status",
    "reasons",
    "connection_status",
    "uptime_seconds",
    "pid",
    "hostname",
    "version",
    "config",
    "config_version",
    "last_collection",
    "metrics",
}
HEALTH_METRICS = {
    "processes_collected",
    "events_published",
    "buffer_level_percent",
    "collection_cycles",
    "collection_errors",
    "last_cycle_ms",
    "wal_pending",
    "heartbeats_sent",
    "rpc_malformed_total",
    # protocol v2 section 9
    "capture_mode",
    "kernel_events",
    "kernel_events_lost",
    "partial_events",
}
RESPONSE_FIELDS = {
    "request_id",
    "correlation_id",
    "operation",
    "service_id",
    "status",
    "payload",
    "error",
    "state",
    "timestamp",
    "queue_time_ms",
    "execution_time_ms",
    "total_time_ms",
}


def new_id(prefix: str = "pm") -> str:
    """A collector id of this test's own."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def running_agent(
    url: str,
    *,
    register_mode: RegisterMode = "accept",
    heartbeat_interval_ms: int | None = None,
    client_id: str = "test-agent",
) -> AsyncIterator[ContractAgent]:
    """A started contract agent, closed at the end."""
    agent = ContractAgent(
        url,
        client_id=client_id,
        register_mode=register_mode,
        heartbeat_interval_ms=heartbeat_interval_ms,
    )
    await agent.start()
    try:
        yield agent
    finally:
        await agent.close()


@contextmanager
def daemon(
    tmp_path: Path,
    url: str | None,
    collector_id: str,
    *,
    name: str = "data",
    extra_args: tuple[str, ...] = (),
) -> Iterator[DaemonProcess]:
    """A running ``procmond run``, always ended (SIGKILL at worst) on exit."""
    process = DaemonProcess(
        tmp_path / name, redis_url=url, collector_id=collector_id, extra_args=extra_args
    )
    with process:
        yield process


@contextmanager
def churn_child(marker: str) -> Iterator[subprocess.Popen[bytes]]:
    """A child process (cmdline carries ``marker``) that lives until the block ends."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", marker],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield child
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


def marked(entries: list[dict[str, Any]], marker: str, stream: str) -> list[dict[str, Any]]:
    """Stream entries whose event cmdline carries ``marker``."""
    return [
        e for e in entries if e["stream"] == stream and marker in (e["event"].get("cmdline") or [])
    ]


def started(entries: list[dict[str, Any]], marker: str) -> list[dict[str, Any]]:
    """The start events of the processes whose command line carries ``marker``.

    A cycle that sees such a process first reports its start with that command
    line; the kernel reports the start at fork, with the parent's command line,
    and the marker in the exec that follows (protocol section 9): either way
    the process has exactly one start, found here by pid.
    """
    pids = {
        e["event"]["pid"]
        for e in entries
        if e["stream"] in ("events.process.start", "events.process.exec")
        and marker in (e["event"].get("cmdline") or [])
    }
    return [
        e for e in entries if e["stream"] == "events.process.start" and e["event"]["pid"] in pids
    ]


async def poll(
    probe: Callable[[], Awaitable[T]],
    ok: Callable[[T], bool],
    *,
    timeout: float,
    every: float = 0.1,
) -> T:
    """Call ``probe`` until ``ok(result)``; bounded by ``timeout`` (TimeoutError).

    A probe that found the collector not subscribed yet (:class:`NotListeningError`,
    e.g. while it reconnects) counts as "not yet", like a result that is not ok.
    """
    deadline = time.monotonic() + timeout
    value: T | NotListeningError
    while True:
        try:
            value = await probe()
        except NotListeningError as exc:
            value = exc
        else:
            if ok(value):
                return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s; last value {value!r}")
        await asyncio.sleep(every)


def wal_contains(data_dir: Path, collector_id: str, text: str) -> int:
    """How many times ``text`` occurs in the collector's write-ahead log files."""
    directory = data_dir / "wal" / collector_id
    needle = text.encode()
    return sum(path.read_bytes().count(needle) for path in directory.glob("*") if path.is_file())
