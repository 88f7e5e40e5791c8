"""Collection benchmark: ProcessCollector cycles against ``ps -eo`` on the same process table.

Usage: ``python -m bench.bench_collection [--processes N] [--cycles K]``.

It forks N children that block reading a pipe (about 0.3 ms each, no exec), so
the table holds N more sleeping processes. The children hold only the read end;
when the benchmark ends for any reason, even SIGKILL, its write end closes and
every child reads EOF and exits. On a normal end or Ctrl-C it also kills and
reaps them itself. It prints one JSON object: the first (baseline) cycle, the
median steady-state cycle, the median ``ps`` run and their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from procmond.collect.collector import CollectorSettings, ProcessCollector

PS_COMMAND = ["ps", "-eo", "pid,ppid,user,lstart,stat,comm,args"]


@contextmanager
def sleeping_children(count: int) -> Iterator[list[int]]:
    """Fork ``count`` children blocked on a pipe read; kill and reap them on exit."""
    read_end, write_end = os.pipe()
    pids: list[int] = []
    try:
        for _ in range(count):
            # Block SIGINT across fork: a Ctrl-C must never raise inside a fresh
            # child (it would run the benchmark's cleanup on its siblings).
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            pid = os.fork()
            if pid == 0:  # child: default SIGINT, wait for EOF, never return
                try:
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
                    os.close(write_end)
                    os.read(read_end, 1)
                finally:
                    os._exit(0)
            pids.append(pid)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        yield pids
    finally:
        os.close(write_end)  # EOF for every child, even those we fail to signal
        os.close(read_end)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with suppress(ChildProcessError):
                os.waitpid(pid, 0)


def timed_ms(run: Callable[[], object]) -> float:
    """Wall time of one call, in milliseconds."""
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) * 1000.0


def run_ps() -> None:
    """The reference: one ``ps -eo`` run, output read as a consumer would."""
    subprocess.run(PS_COMMAND, check=True, capture_output=True)


def measure(processes: int, cycles: int, hashes: bool) -> dict[str, object]:
    """Spawn, measure baseline and steady-state cycles and ``ps``, return the metrics."""
    with sleeping_children(processes):
        collector = ProcessCollector(CollectorSettings(compute_executable_hashes=hashes))
        first = collector.collect()
        steady = [collector.collect() for _ in range(cycles)]
        ps_ms = [timed_ms(run_ps) for _ in range(cycles)]
        # Interleave a second round so drift (cache, frequency) hits both alike.
        steady += [collector.collect() for _ in range(cycles)]
        ps_ms += [timed_ms(run_ps) for _ in range(cycles)]
    steady_ms = statistics.median(r.duration_ms for r in steady)
    ps_median = statistics.median(ps_ms)
    return {
        "spawned_processes": processes,
        "processes_seen": steady[-1].processes,
        "cycles": len(steady),
        "compute_executable_hashes": hashes,
        "baseline_cycle_ms": round(first.duration_ms, 2),
        "baseline_events": len(first.events),
        "steady_cycle_ms_median": round(steady_ms, 2),
        "steady_cycle_ms_min": round(min(r.duration_ms for r in steady), 2),
        "steady_cycle_ms_max": round(max(r.duration_ms for r in steady), 2),
        "ps_ms_median": round(ps_median, 2),
        "steady_over_ps_ratio": round(steady_ms / ps_median, 3),
        "baseline_over_ps_ratio": round(first.duration_ms / ps_median, 3),
        "steady_us_per_process": round(steady_ms * 1000.0 / max(steady[-1].processes, 1), 2),
        "errors_total": first.errors + sum(r.errors for r in steady),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the benchmark, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=1000, help="children to spawn")
    parser.add_argument("--cycles", type=int, default=5, help="steady-state cycles per round")
    parser.add_argument("--hashes", action="store_true", help="compute executable hashes")
    args = parser.parse_args(argv)
    try:
        result = measure(args.processes, args.cycles, args.hashes)
    except KeyboardInterrupt:
        print("interrupted; children reaped", file=sys.stderr)
        return 130
    print(json.dumps(result, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
