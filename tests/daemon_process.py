"""Run ``procmond run`` as a real subprocess for end-to-end tests.

The daemon is started as ``python -m procmond.cli run ...`` with the test's
interpreter (so the project under test runs, not an installed copy), its
stderr going to a file the test can read, and it is always ended when the
context exits: SIGTERM, then SIGKILL if it does not go within the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self


class DaemonProcess:
    """One ``procmond run`` child process."""

    def __init__(
        self,
        data_dir: Path,
        *,
        redis_url: str | None,
        collector_id: str = "procmond",
        interval: float = 1,
        extra_args: tuple[str, ...] = (),
        log_name: str = "procmond.log",
        heartbeat_interval_ms: int | None = 200,
    ) -> None:
        self.data_dir = data_dir
        self.redis_url = redis_url
        self.collector_id = collector_id
        self.interval = interval
        self.extra_args = extra_args
        #: The collector's own interval (200 ms keeps the tests fast; protocol
        #: section 7 v2 lets an agent assign only 1,000..3,600,000 ms).
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.log_path = data_dir.parent / f"{data_dir.name}-{log_name}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        """The command line."""
        args = [sys.executable, "-m", "procmond.cli", "run"]
        if self.redis_url is not None:
            args += ["--redis-url", self.redis_url]
        args += ["--data-dir", str(self.data_dir), "--collector-id", self.collector_id]
        args += ["--interval", str(self.interval), "--log-format", "json"]
        if self.heartbeat_interval_ms is not None:
            args += ["--heartbeat-interval-ms", str(self.heartbeat_interval_ms)]
        return args + list(self.extra_args)

    def start(self) -> Self:
        """Spawn the daemon (returns at once; wait for readiness through the agent)."""
        self._log = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROCMOND_")}
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=env,
        )
        return self

    @property
    def pid(self) -> int:
        """The daemon's pid."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while running."""
        assert self.proc is not None
        return self.proc.poll()

    def signal(self, signum: signal.Signals) -> None:
        """Send a signal if the daemon still runs."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def kill(self) -> int:
        """SIGKILL and reap; returns the status."""
        self.signal(signal.SIGKILL)
        return self.wait(10)

    def wait(self, timeout: float) -> int:
        """Wait (bounded) for the exit; returns the status (TimeoutExpired if it runs on)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    async def wait_async(self, timeout: float) -> int:
        """Wait for the exit without blocking the event loop (polling, bounded)."""
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            # Nothing signals a child's exit to asyncio here (Popen, not asyncio's
            # subprocess), so poll it, bounded by the timeout.
            while (code := self.proc.poll()) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        return code

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
        return self.proc.wait(10)

    def close(self) -> None:
        """End the daemon whatever its state and close the log file."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stderr_text(self) -> str:
        """Everything the daemon wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (other lines, the operator's ``procmond:`` ones, skipped)."""
        records = []
        for line in self.stderr_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
        return records

    async def wait_for_output(self, text: str, timeout: float = 10.0) -> str:
        """Poll stderr until a line containing ``text`` appears; return that line."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.stderr_text().splitlines():
                if text in line:
                    return line
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"procmond exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} in procmond's output:\n{self.tail()}")
            await asyncio.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        """The last lines of the daemon's output, for failure messages."""
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
