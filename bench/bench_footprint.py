"""Idle footprint, import time and start-up-to-ready time of ``procmond run``.

``python -m bench.bench_footprint [--quick]`` prints one JSON object.

* Import time: wall time of ``python -c "import procmond.daemon.run"`` (median of
  several runs) against ``python -c "pass"``; the heaviest imports from one
  ``python -X importtime`` run are listed.
* Start-up to ready: from spawning ``procmond run`` (private redis-server,
  :class:`bench.wire.MinimalAgent` accepting ``Register``) to the agent
  receiving the ``ready`` announcement; against the import time above.
* Idle: once ready and the start-up baseline cycle has been flushed, RSS
  (sampled every second; the peak is reported) and CPU time (user+system
  over the window, as % of one core) of procmond's own process over 60 s
  (``--quick``: 15 s) at the default 30 s interval, so the window holds
  regular cycles and heartbeats. The redis-server is reported separately.
  Baseline, same window: an idle ``python -c "import time; time.sleep(...)"``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import psutil

from bench import wire
from bench.common import (
    MEASUREMENT_ERRORS,
    metric,
    private_redis,
    procmond_command,
    run_benchmark,
    say,
    sleeping_children,
    spawn,
    wait_until,
)
from bench.wire import Caller, MinimalAgent, collector_topic, request, response_topic

RSS_LIMIT_MB: Final = 60.0  # issue 6
CPU_LIMIT_PERCENT: Final = 0.5  # issue 6, of one core
COLLECTOR_ID: Final = "bench-footprint"
CLIENT_ID: Final = "bench-footprint"


def wall_time(command: list[str]) -> float:
    """Seconds from spawn to exit of ``command`` (which must succeed)."""
    t0 = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return time.perf_counter() - t0


def import_times(runs: int) -> dict[str, Any]:
    """Median wall time of the interpreter alone and with ``import procmond.daemon.run``."""
    bare: list[float] = []
    daemon: list[float] = []
    for _ in range(runs):  # alternate, so drift hits both
        bare.append(wall_time([sys.executable, "-c", "pass"]))
        daemon.append(wall_time([sys.executable, "-c", "import procmond.daemon.run"]))
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import procmond.daemon.run"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stderr
    # Cumulative time per package root (``pydantic``, ``redis``, ...), wherever
    # in the tree it was first imported.
    roots: dict[str, int] = {}
    for line in trace.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].strip()
        if "." not in name and name != "procmond":
            roots[name] = max(roots.get(name, 0), int(parts[1].strip()))
    heaviest = sorted(((us, name) for name, us in roots.items()), reverse=True)
    return {
        "runs": runs,
        "python_bare_ms": round(statistics.median(bare) * 1000, 1),
        "import_procmond_daemon_ms": round(statistics.median(daemon) * 1000, 1),
        "heaviest_packages_cumulative_ms": {n: round(us / 1000, 1) for us, n in heaviest[:10]},
    }


def health(caller: Caller) -> dict[str, Any]:
    """One HealthCheck payload."""
    return wire.health(caller, COLLECTOR_ID, CLIENT_ID)


def _cpu_s(proc: psutil.Process) -> float:
    """CPU seconds of every thread, from the scheduler's nanosecond counters.

    ``cpu_times()`` counts clock ticks (10 ms): too coarse for a process that
    uses a few milliseconds a second. Falls back to it off Linux.
    """
    total = 0
    try:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread may end meanwhile
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        times = proc.cpu_times()
        return float(times.user + times.system)
    return total / 1e9


def observe(procs: dict[str, psutil.Process], window: float) -> dict[str, dict[str, Any]]:
    """RSS every second and CPU over ``window`` seconds for each process."""
    cpu0 = {name: _cpu_s(p) for name, p in procs.items()}
    rss: dict[str, list[int]] = {name: [] for name in procs}
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < window:
        for name, proc in procs.items():
            rss[name].append(proc.memory_info().rss)
        time.sleep(min(1.0, max(0.0, window - (now - t0))))
    elapsed = time.monotonic() - t0
    out: dict[str, dict[str, Any]] = {}
    for name, proc in procs.items():
        full = proc.memory_full_info()
        out[name] = {
            "rss_mb_peak": round(max(rss[name]) / 2**20, 1),
            "rss_mb_last": round(rss[name][-1] / 2**20, 1),
            "uss_mb": round(full.uss / 2**20, 1),
            "pss_mb": round(getattr(full, "pss", 0) / 2**20, 1),
            "cpu_percent_of_one_core": round((_cpu_s(proc) - cpu0[name]) / elapsed * 100, 3),
            "threads": proc.num_threads(),
        }
    return out


def measure(args: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Import times, start-up runs, then the idle window; return (metrics, details)."""
    say(f"import time, {args.import_runs} runs")
    imports = import_times(args.import_runs)
    ready_s: list[float] = []
    details: dict[str, Any] = {"imports": imports, "window_s": args.window}
    with private_redis(tmp / "redis") as server, MinimalAgent(server.url) as agent:
        caller = Caller(server.url, response_topic(CLIENT_ID))
        try:
            for run in range(args.starts):
                collector = f"{COLLECTOR_ID}-{run}"
                command = procmond_command(tmp / f"start-{run}", server.url, collector_id=collector)
                with spawn(command, tmp / f"start-{run}.log"):
                    t0 = time.monotonic()
                    ready_s.append(agent.wait_for(collector, "ready", 60) - t0)
            say(f"start-up to ready: {[round(s, 3) for s in ready_s]} s")
            command = procmond_command(tmp / "idle", server.url, collector_id=COLLECTOR_ID)
            sleeper = [sys.executable, "-c", f"import time; time.sleep({args.window + 60})"]
            with (
                spawn(sleeper, tmp / "sleeper.log") as baseline,
                spawn(command, tmp / "idle.log") as daemon,
            ):
                agent.wait_for(COLLECTOR_ID, "ready", 60)

                def settled() -> bool:
                    metrics = health(caller)["metrics"]
                    return bool(metrics["collection_cycles"] >= 1 and not metrics["wal_pending"])

                wait_until(settled, 60, "the start-up cycle to be flushed", interval=0.2)
                say(f"idle window: {args.window:g} s")
                seen = observe(
                    {
                        "procmond": psutil.Process(daemon.pid),
                        "redis_server": psutil.Process(server.pid),
                        "baseline_sleep": psutil.Process(baseline.pid),
                    },
                    args.window,
                )
                after = health(caller)
                children = psutil.Process(daemon.pid).children(recursive=True)
            say(f"RSS with {args.extra_processes} extra processes")
            details["bigger_table"] = bigger_table(args, tmp, server.url, agent, caller)
        finally:
            caller.close()
    details["startup_to_ready_s"] = [round(s, 3) for s in ready_s]
    details["idle"] = seen
    details["procmond_children"] = len(children)
    details["cycles_after_window"] = after["metrics"]["collection_cycles"]
    details["processes_collected"] = after["metrics"]["processes_collected"]
    return _metrics(details), details


def bigger_table(
    args: argparse.Namespace, tmp: Path, url: str, agent: MinimalAgent, caller: Caller
) -> dict[str, Any]:
    """RSS once procmond tracks ``--extra-processes`` more processes (memory grows with them).

    ``--interval 1`` so that steady cycles follow the baseline one quickly;
    RSS is sampled for a few seconds after three cycles.
    """
    collector = f"{COLLECTOR_ID}-big"
    command = procmond_command(tmp / "big", url, collector_id=collector, interval=1)
    with sleeping_children(args.extra_processes), spawn(command, tmp / "big.log") as daemon:
        agent.wait_for(collector, "ready", 60)
        topic = collector_topic(collector)

        def cycles() -> int:
            request_id, data = request("HealthCheck", None, client_id=CLIENT_ID, target=topic)
            reply = json.loads(caller.call(topic, data, request_id.encode()))
            metrics = reply["payload"]["metrics"]
            return 0 if metrics["wal_pending"] else int(metrics["collection_cycles"])

        wait_until(lambda: cycles() >= 3, 120, "three cycles over the bigger table", 0.3)
        proc = psutil.Process(daemon.pid)
        seen = observe({"procmond": proc}, 5.0)["procmond"]
        return {
            "extra_processes": args.extra_processes,
            "processes_collected": _processes(caller, topic),
            "rss_mb_peak": seen["rss_mb_peak"],
            "uss_mb": seen["uss_mb"],
        }


def _processes(caller: Caller, topic: str) -> int:
    request_id, data = request("HealthCheck", None, client_id=CLIENT_ID, target=topic)
    reply = json.loads(caller.call(topic, data, request_id.encode()))
    return int(reply["payload"]["metrics"]["processes_collected"])


def _metrics(d: dict[str, Any]) -> list[dict[str, Any]]:
    me, base, red = d["idle"]["procmond"], d["idle"]["baseline_sleep"], d["idle"]["redis_server"]
    imports = d["imports"]
    ready_ms = round(statistics.median(d["startup_to_ready_s"]) * 1000, 1)
    big = d["bigger_table"]
    return [
        metric(
            "idle_rss_peak",
            "MB",
            me["rss_mb_peak"],
            baseline=base["rss_mb_peak"],
            target=f"< {RSS_LIMIT_MB:g} MB",
            met=me["rss_mb_peak"] < RSS_LIMIT_MB,
            note=f"USS {me['uss_mb']} MB; redis-server RSS {red['rss_mb_peak']} MB (separate)",
        ),
        metric(
            "idle_cpu",
            "% of one core",
            me["cpu_percent_of_one_core"],
            baseline=base["cpu_percent_of_one_core"],
            target=f"< {CPU_LIMIT_PERCENT:g} %",
            met=me["cpu_percent_of_one_core"] < CPU_LIMIT_PERCENT,
            note=f"window {d['window_s']:g} s at the default interval; "
            f"redis-server {red['cpu_percent_of_one_core']} % (separate)",
        ),
        metric(
            "rss_peak_bigger_process_table",
            "MB",
            big["rss_mb_peak"],
            baseline=me["rss_mb_peak"],
            target=f"< {RSS_LIMIT_MB:g} MB",
            met=big["rss_mb_peak"] < RSS_LIMIT_MB,
            note=f"{big['processes_collected']} processes tracked "
            f"({big['extra_processes']} sleeping ones added), --interval 1; "
            f"baseline: the idle run above ({d['processes_collected']} processes)",
        ),
        metric(
            "import_procmond_daemon",
            "ms",
            imports["import_procmond_daemon_ms"],
            baseline=imports["python_bare_ms"],
            target="(reported)",
            met=None,
            note="baseline: python -c pass",
        ),
        metric(
            "startup_to_ready",
            "ms",
            ready_ms,
            baseline=imports["import_procmond_daemon_ms"],
            target="(reported)",
            met=None,
            note="median of runs; baseline: python -c 'import procmond.daemon.run'",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Parse options, run, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="15 s window, fewer runs")
    parser.add_argument("--window", type=float, help="idle observation window in seconds")
    parser.add_argument("--starts", type=int, help="start-up-to-ready runs")
    parser.add_argument("--import-runs", type=int, help="import time runs")
    parser.add_argument("--extra-processes", type=int, help="processes added for the RSS check")
    args = parser.parse_args(argv)
    args.window = args.window or (15.0 if args.quick else 60.0)
    args.starts = args.starts or (2 if args.quick else 5)
    args.import_runs = args.import_runs or (3 if args.quick else 7)
    args.extra_processes = args.extra_processes or (500 if args.quick else 1500)
    return run_benchmark(
        "footprint",
        args.quick,
        lambda tmp: measure(args, tmp),
        errors=(*MEASUREMENT_ERRORS, psutil.Error),
    )


if __name__ == "__main__":
    sys.exit(main())
