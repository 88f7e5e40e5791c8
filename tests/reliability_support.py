"""Shared pieces of the reliability suite (issue 5): counts, churn, durable Redis, figures.

Every fault test runs with a count of injections: a small one in the quick
suite (``make test``) and a large one marked ``soak`` (``make soak``). Each
test ends by recording a one-line JSON summary (printed with ``-s`` and
appended to :data:`SUMMARY_FILE`), from which docs/reliability.md is filled.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest
from contract_agent import ContractAgent
from e2e_support import poll
from redis.exceptions import RedisError
from redis_fixtures import running_redis

from procmond.embedded import RedisServer

#: Where each test appends its one-line JSON summary.
SUMMARY_FILE = Path(
    os.environ.get("PROCMOND_RELIABILITY_SUMMARY")
    or Path(tempfile.gettempdir()) / "procmond-reliability.jsonl"
)


def counts(quick: int, soak: int, *, soak_timeout: float = 1800) -> list[Any]:
    """Parameters for a count of injections: ``quick`` (make test) and ``soak`` (make soak)."""
    return [
        pytest.param(quick, id=f"quick-{quick}"),
        pytest.param(
            soak,
            id=f"soak-{soak}",
            marks=[pytest.mark.soak, pytest.mark.timeout(soak_timeout)],
        ),
    ]


def record(fault: str, **figures: Any) -> dict[str, Any]:
    """Print and append one summary line: ``RELIABILITY {"fault": ..., ...}``."""
    line = {"fault": fault, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}
    text = json.dumps(line, sort_keys=False)
    print(f"RELIABILITY {text}")
    with SUMMARY_FILE.open("a") as handle:
        handle.write(text + "\n")
    return line


@contextmanager
def durable_redis() -> Iterator[RedisServer]:
    """A private server whose acknowledged writes survive SIGKILL (AOF, fsync always)."""
    with running_redis(
        persistent=True, extra_args=("--appendfsync", "always"), prefix="pmd-rel-"
    ) as server:
        yield server


def blocked_children(marker: str, count: int, filler: str = "") -> list[subprocess.Popen[bytes]]:
    """Children (cmdline carries ``marker``, then ``filler``) that live until
    :func:`release` closes their stdin; ``filler`` makes their events big."""
    return [
        subprocess.Popen(["/bin/sh", "-c", "read _", marker, filler], stdin=subprocess.PIPE)
        for _ in range(count)
    ]


def release(children: list[subprocess.Popen[bytes]]) -> None:
    """End :func:`blocked_children` (EOF on stdin) and reap them."""
    for child in children:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


class Churn:
    """A thread that keeps short-lived child processes coming and going.

    Every ``every`` seconds it starts a child that lives ``life`` seconds
    (long enough for a 1 s collection cycle to see it start and stop), and
    reaps the ones that ended. ``args`` may be given for bigger cmdlines.
    """

    def __init__(
        self,
        *,
        every: float = 0.1,
        life: float = 1.5,
        marker: str = "churn",
        extra_arg: str = "",
    ) -> None:
        self.every = every
        self.life = life
        self.marker = marker
        self.extra_arg = extra_arg
        self.spawned = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="churn", daemon=True)
        self._children: list[subprocess.Popen[bytes]] = []

    def _spawn(self) -> subprocess.Popen[bytes]:
        # No `exec`: the shell keeps the marker in its cmdline (its sleep child is
        # one more short-lived process).
        args = ["/bin/sh", "-c", f"sleep {self.life}", self.marker]
        if self.extra_arg:
            args.append(self.extra_arg)
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._children.append(self._spawn())
            self.spawned += 1
            self._children = [c for c in self._children if c.poll() is None]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        for child in self._children:
            child.kill()
            child.wait(10)


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` from /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Poll (bounded) until ``pid`` no longer runs."""
    async with asyncio.timeout(timeout):
        while alive(pid):  # noqa: ASYNC110 - another process's exit: nothing to await
            await asyncio.sleep(0.02)


def wal_bytes(data_dir: Path, collector_id: str) -> int:
    """Total size of the collector's write-ahead log segments."""
    directory = data_dir / "wal" / collector_id
    return sum(p.stat().st_size for p in directory.glob("wal-*.log"))


class Requests:
    """Counts the RPCs a test sends through the contract agent and the answers it gets."""

    def __init__(self, agent: ContractAgent) -> None:
        self.agent = agent
        self.sent = 0
        self.answered = 0

    async def call(
        self, cid: str, operation: str, payload: Any = None, **kw: Any
    ) -> dict[str, Any]:
        """agent.call, counted."""
        self.sent += 1
        answer = await self.agent.call(cid, operation, payload, **kw)
        self.answered += 1
        return answer

    async def health(self, cid: str, timeout: float = 5.0) -> dict[str, Any]:
        """A HealthCheck payload (asserts Success)."""
        answer = await self.call(cid, "HealthCheck", None, timeout=timeout)
        assert answer["status"] == "Success", answer
        payload: dict[str, Any] = answer["payload"]
        return payload

    async def caught_up(self, cid: str, timeout: float = 30.0) -> dict[str, Any]:
        """Connected, this boot's baseline in, nothing left in the log or held back."""

        async def probe() -> dict[str, Any] | None:
            try:
                return await self.health(cid, timeout=3.0)
            except (TimeoutError, RedisError, OSError):  # Redis still away: not answered
                return None

        def done(h: dict[str, Any] | None) -> bool:
            return (
                h is not None
                and h["connection_status"] == "Connected"
                and h["metrics"]["collection_cycles"] >= 1
                and h["metrics"]["wal_pending"] == 0
                and h["metrics"]["events_published"] > 0
                and not any("write-ahead log" in r for r in h["reasons"])
            )

        health = await poll(probe, done, timeout=timeout, every=0.2)
        assert health is not None
        return health

    async def shutdown(self, cid: str) -> dict[str, Any]:
        """GracefulShutdown, answered Success."""
        answer = await self.call(
            cid, "GracefulShutdown", {"reason": "end of reliability test"}, timeout=30
        )
        assert answer["status"] == "Success", answer
        return answer


def heartbeat_gaps(sequences: list[int]) -> int:
    """How many runs of missing numbers there are between the heartbeats received."""
    return sum(1 for a, b in itertools.pairwise(sequences) if b > a + 1)
