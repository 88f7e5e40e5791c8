"""Shared helpers of the benchmarks: machine facts, statistics, the JSON result, processes.

Every benchmark prints one JSON object built by :func:`result`: its metrics
(each with a unit, the measured value, the baseline measured in the same run,
their ratio, the target and whether it was met), free-form details and the
machine it ran on. The machines are shared and noisy, so a figure means
something only next to its baseline from the same run (DEVELOPERS).

Process hygiene: everything started here dies with the benchmark. Children
get ``PR_SET_PDEATHSIG`` (SIGKILL on the benchmark's death, even a SIGKILL of
the benchmark), and the context managers end them in ``finally`` blocks,
which also run on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from procmond.embedded import EmbeddedRedisError, RedisServer, free_port

_PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>


# -- machine --------------------------------------------------------------------------


def cpu_model() -> str:
    """The first ``model name`` of /proc/cpuinfo (or the platform's processor string)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def redis_version() -> str | None:
    """``redis-server --version``'s version field, or None when there is none."""
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip() or None


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge the numbers: cores, cpu, versions, load, date."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "redis_server": redis_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# -- statistics -----------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """n, min, p50, p90, p99, max and mean of durations given in seconds, in ms."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": len(ms),
        "min": round(min(ms), 3),
        "p50": round(percentile(ms, 50), 3),
        "p90": round(percentile(ms, 90), 3),
        "p99": round(percentile(ms, 99), 3),
        "max": round(max(ms), 3),
        "mean": round(statistics.fmean(ms), 3),
    }


def ratio(measured: float | None, baseline: float | None) -> float | None:
    """measured / baseline, rounded; None when either is missing or the baseline is 0."""
    if measured is None or baseline is None or baseline == 0:
        return None
    return round(measured / baseline, 3)


def metric(
    name: str,
    unit: str,
    measured: float | None,
    *,
    baseline: float | None,
    target: str,
    met: bool | None,
    note: str | None = None,
) -> dict[str, Any]:
    """One row of the results table (``met`` None: no target applies or not measured)."""
    row: dict[str, Any] = {
        "name": name,
        "unit": unit,
        "measured": measured,
        "baseline": baseline,
        "ratio": ratio(measured, baseline),
        "target": target,
        "met": met,
    }
    if note:
        row["note"] = note
    return row


def result(
    benchmark: str,
    quick: bool,
    metrics: list[dict[str, Any]],
    details: dict[str, Any],
    machine: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """The one JSON object a benchmark prints."""
    return {
        "benchmark": benchmark,
        "quick": quick,
        "metrics": metrics,
        "all_met": all(m["met"] is not False for m in metrics),
        "details": details,
        "machine": machine,
        "elapsed_s": round(time.monotonic() - started, 2),
    }


Measure = Callable[[Path], tuple[list[dict[str, Any]], dict[str, Any]]]
#: What a failed measurement may raise: reported as an error object, exit 1.
MEASUREMENT_ERRORS: Final = (subprocess.SubprocessError, OSError, TimeoutError, RuntimeError)


def run_benchmark(
    name: str,
    quick: bool,
    measure: Measure,
    errors: tuple[type[BaseException], ...] = MEASUREMENT_ERRORS,
) -> int:
    """Run ``measure`` in a private temp dir and print its one JSON object.

    Returns the process exit status: 0, 1 (measurement failed: an error
    object is printed instead), or 130 (Ctrl-C; the children are ended).
    """
    started = time.monotonic()
    machine = machine_info()
    try:
        with temp_dir(f"pm-{name}-") as tmp:
            metrics, details = measure(tmp)
    except KeyboardInterrupt:
        say("interrupted; children ended")
        return 130
    except errors as exc:
        emit({"benchmark": name, "error": f"{type(exc).__name__}: {exc}", "machine": machine})
        return 1
    emit(result(name, quick, metrics, details, machine, started))
    return 0


def emit(document: dict[str, Any]) -> None:
    """Print the benchmark's JSON object on stdout (one line)."""
    print(json.dumps(document), flush=True)


def say(message: str) -> None:
    """Progress on stderr, so that stdout stays one JSON object."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- processes ------------------------------------------------------------------------


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the benchmark dies (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def end_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM (and SIGCONT, should it be stopped), SIGKILL after ``timeout``; reap."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return proc.wait()


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A short private directory (unix socket paths must stay under 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir="/tmp") as name:
        yield Path(name)


@contextlib.contextmanager
def private_redis(directory: Path, *, tcp: bool = True) -> Iterator[RedisServer]:
    """A private ``redis-server`` (never 127.0.0.1:6379): TCP loopback or a unix socket."""
    server: RedisServer | None = None
    for attempt in range(3):  # free_port() is racy: another process may take the port
        server = (
            RedisServer(directory, persistent=False, port=free_port())
            if tcp
            else RedisServer(directory, persistent=False)
        )
        try:
            server.start()
            break
        except EmbeddedRedisError:
            server.stop()
            if attempt == 2:
                raise
    assert server is not None
    try:
        yield server
    finally:
        server.stop()


def procmond_command(
    data_dir: Path,
    redis_url: str | None,
    *,
    collector_id: str,
    interval: float | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """``python -m procmond.cli run ...`` with this interpreter (the project under test)."""
    args = [sys.executable, "-m", "procmond.cli", "run", "--data-dir", str(data_dir)]
    if redis_url is not None:
        args += ["--redis-url", redis_url]
    args += ["--collector-id", collector_id, "--log-format", "json", "--log-level", "warning"]
    if interval is not None:
        args += ["--interval", f"{interval:g}"]
    return args + list(extra)


@contextlib.contextmanager
def spawn(
    command: Sequence[str], log_path: Path, *, stdout: int | IO[Any] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` with stderr (and stdout unless given) to ``log_path``; end it after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCMOND_")}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log if stdout is None else stdout,
            stderr=log,
            env=env,
            preexec_fn=die_with_parent,
        )
        try:
            yield proc
        finally:
            end_process(proc)


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a child's log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def sleeping_children(count: int) -> Iterator[list[int]]:
    """Fork ``count`` children blocked reading a pipe, so the process table grows.

    The children hold only the read end: when the benchmark ends in any way,
    even SIGKILL, the write end closes and every child reads EOF and exits.
    On a normal end or Ctrl-C they are also killed and reaped here.
    """
    read_end, write_end = os.pipe()
    pids: list[int] = []
    try:
        for _ in range(count):
            pid = os.fork()
            if pid == 0:  # the child never returns into the benchmark
                try:
                    os.close(write_end)
                    os.read(read_end, 1)
                finally:
                    os._exit(0)
            pids.append(pid)
        yield pids
    finally:
        os.close(write_end)
        os.close(read_end)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate()`` until true; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
