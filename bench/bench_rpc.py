"""RPC latency: HealthCheck round trips through Redis to a real ``procmond run`` and back.

``python -m bench.bench_rpc [--quick]`` prints one JSON object.

Series, all from the same synchronous redis-py client (:class:`bench.wire.Caller`)
over TCP loopback to a private redis-server:

* baseline: the same request bytes sent to a tiny echo responder (another
  process, redis.asyncio like procmond; a blocking redis-py echo is measured
  too, for reference) that republishes them on the client's reply channel;
* idle: procmond at the default interval (no cycle runs during the series,
  after the start-up baseline cycle has finished);
* busy: procmond with ``--interval 1`` and a process table grown by
  ``--busy-processes`` sleeping children, so that collection cycles (on
  procmond's worker thread) overlap requests. The series is paced so that it
  spans many cycles; the echo baseline is interleaved with it, under the
  same load.

The series are interleaved in blocks so that drift of the shared machine hits
baseline and procmond alike. Which samples overlapped a cycle is derived from
the HealthCheck answers themselves: each names the last finished cycle
(``collection_cycles``, ``last_collection``, ``last_cycle_ms``), so every
cycle's wall-clock interval is known afterwards and intersected with each
sample's send..receive interval.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from bench import wire
from bench.common import (
    metric,
    private_redis,
    procmond_command,
    run_benchmark,
    say,
    sleeping_children,
    spawn,
    summarize_ms,
    wait_until,
)
from bench.wire import Caller, MinimalAgent, collector_topic, request, response_topic

CLIENT_ID: Final = "bench-rpc"
ECHO_ASYNC: Final = "bench.echo.async"
ECHO_SYNC: Final = "bench.echo.sync"
P50_FACTOR: Final = 2.0  # issue 6: p50 <= 2x the bare pub/sub round trip
P99_LIMIT_MS: Final = 5.0  # issue 6: p99 < 5 ms on loopback
BLOCKS: Final = 4  # interleaving blocks per series


@dataclass
class Series:
    """Round trips of one responder: durations (s) and wall-clock intervals."""

    name: str
    rtt: list[float] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)
    errors: int = 0


def run_block(
    caller: Caller, series: Series, channel: str, count: int, gap_s: float, keep: bool
) -> None:
    """``count`` HealthCheck round trips on ``channel``, ``gap_s`` apart."""
    target = channel
    for _ in range(count):
        request_id, data = request("HealthCheck", None, client_id=CLIENT_ID, target=target)
        match = request_id.encode()
        wall0 = time.time()
        t0 = time.perf_counter()
        try:
            reply = caller.call(channel, data, match, timeout=10.0)
        except (TimeoutError, LookupError):
            series.errors += 1
            continue
        t1 = time.perf_counter()
        wall1 = time.time()
        series.rtt.append(t1 - t0)
        series.spans.append((wall0, wall1))
        if keep:
            series.replies.append(reply)
        if gap_s:
            time.sleep(gap_s)


def interleave(
    caller: Caller, plan: list[tuple[Series, str, bool]], per_series: int, gap_s: float
) -> None:
    """Run every series of ``plan`` in BLOCKS alternating blocks."""
    block = max(1, per_series // BLOCKS)
    for _ in range(BLOCKS):
        for series, channel, keep in plan:
            run_block(caller, series, channel, block, gap_s, keep)


def health(caller: Caller, collector_id: str) -> dict[str, Any]:
    """One HealthCheck answer's payload."""
    return wire.health(caller, collector_id, CLIENT_ID)


def wait_settled(caller: Caller, collector_id: str, cycles: int, timeout: float) -> None:
    """Until ``cycles`` cycles finished and the log is empty (start-up burst over)."""

    def settled() -> bool:
        metrics = health(caller, collector_id).get("metrics", {})
        done = metrics.get("collection_cycles", 0) >= cycles
        return bool(done and not metrics.get("wal_pending"))

    wait_until(settled, timeout, f"{collector_id} to finish {cycles} cycle(s)", interval=0.2)


def wait_subscribed(caller: Caller, channel: str, timeout: float = 15.0) -> None:
    """Until somebody listens on ``channel`` (PUBLISH reaches a subscriber)."""
    wait_until(lambda: caller.publish(channel, b"{}") > 0, timeout, f"a subscriber of {channel}")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def split_by_cycles(
    series: Series, intervals: list[tuple[float, float]]
) -> tuple[list[float], list[float]]:
    """Round trips whose send..receive interval overlapped a cycle, and the others."""
    overlapped: list[float] = []
    clear: list[float] = []
    for rtt, (sent, received) in zip(series.rtt, series.spans, strict=True):
        hit = any(start <= received and sent <= end for start, end in intervals)
        (overlapped if hit else clear).append(rtt)
    return overlapped, clear


def cycle_intervals(series: Series) -> list[tuple[float, float]]:
    """Wall-clock (start, end) of every collection cycle named in the answers."""
    cycles: dict[int, tuple[float, float]] = {}
    for raw in series.replies:
        payload = json.loads(raw).get("payload") or {}
        metrics = payload.get("metrics") or {}
        number = metrics.get("collection_cycles")
        last = payload.get("last_collection")
        took = metrics.get("last_cycle_ms")
        if number and last and took is not None and number not in cycles:
            end = _epoch(last)
            cycles[number] = (end - float(took) / 1000.0, end)
    return sorted(cycles.values())


def overlap_report(series: Series, intervals: list[tuple[float, float]]) -> dict[str, Any]:
    """How many samples overlapped a cycle and the latency of each group."""
    overlapped, clear = split_by_cycles(series, intervals)
    return {
        "samples_overlapping_cycle": len(overlapped),
        "rtt_overlapping_cycle_ms": summarize_ms(overlapped) if overlapped else None,
        "rtt_not_overlapping_ms": summarize_ms(clear) if clear else None,
    }


def analyse_procmond(series: Series) -> dict[str, Any]:
    """Statuses, server-side times and the samples that overlapped a collection cycle."""
    statuses: dict[str, int] = {}
    queue_ms: list[float] = []
    exec_ms: list[float] = []
    for raw in series.replies:
        reply = json.loads(raw)
        statuses[reply.get("status", "?")] = statuses.get(reply.get("status", "?"), 0) + 1
        queue_ms.append(float(reply.get("queue_time_ms") or 0.0))
        exec_ms.append(float(reply.get("execution_time_ms") or 0.0))
    intervals = cycle_intervals(series)
    cycle_ms = sorted((end - start) * 1000 for start, end in intervals)
    return {
        "statuses": statuses,
        "server_queue_ms": summarize_ms([q / 1000 for q in queue_ms]) if queue_ms else None,
        "server_execution_ms": summarize_ms([e / 1000 for e in exec_ms]) if exec_ms else None,
        "cycles_seen": len(intervals),
        "cycle_ms_median": round(cycle_ms[len(cycle_ms) // 2], 2) if cycle_ms else None,
        "cycle_ms_max": round(cycle_ms[-1], 2) if cycle_ms else None,
        **overlap_report(series, intervals),
    }


def _stats(series: Series) -> dict[str, Any]:
    if not series.rtt:
        raise RuntimeError(f"series {series.name}: no successful round trip")
    return {**summarize_ms(series.rtt), "errors": series.errors}


def measure(args: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run both phases; return (metrics, details)."""
    details: dict[str, Any] = {
        "samples_per_series": args.samples,
        "busy_samples": args.busy_samples,
        "busy_processes": args.busy_processes,
        "gap_ms": args.gap_ms,
        "busy_gap_ms": args.busy_gap_ms,
        "transport": "TCP loopback to a private redis-server",
    }
    with private_redis(tmp / "redis") as server, MinimalAgent(server.url) as agent:
        url = server.url
        caller = Caller(url, response_topic(CLIENT_ID))
        try:
            reply = response_topic(CLIENT_ID)
            echo = [sys.executable, "-m", "bench.echo_responder", url]
            idle_cmd = procmond_command(tmp / "idle", url, collector_id="bench-idle")
            with (
                spawn([*echo, ECHO_ASYNC, reply], tmp / "echo-async.log"),
                spawn([*echo, ECHO_SYNC, reply, "--mode", "sync"], tmp / "echo-sync.log"),
                spawn(idle_cmd, tmp / "idle.log") as idle,
            ):
                for channel in (ECHO_ASYNC, ECHO_SYNC):
                    wait_subscribed(caller, channel)
                agent.wait_for("bench-idle", "ready", 30)
                wait_settled(caller, "bench-idle", 1, 60)
                base = Series("echo-async")
                base_sync = Series("echo-sync")
                idle_series = Series("procmond-idle")
                topic = collector_topic("bench-idle")
                warm = Series("warm-up")
                for channel in (ECHO_ASYNC, ECHO_SYNC, topic):
                    run_block(caller, warm, channel, 50, 0.0, False)
                say(f"phase 1: {args.samples} round trips per series, interleaved")
                plan = [(base, ECHO_ASYNC, False), (base_sync, ECHO_SYNC, False)]
                plan.append((idle_series, topic, True))
                interleave(caller, plan, args.samples, args.gap_ms / 1000)
                idle_rss = _rss_mb(idle.pid)
            details["baseline_echo_async_ms"] = _stats(base)
            details["baseline_echo_sync_ms"] = _stats(base_sync)
            details["procmond_idle_ms"] = _stats(idle_series)
            details["procmond_idle"] = analyse_procmond(idle_series)
            details["procmond_idle_rss_mb"] = idle_rss

            say(f"phase 2: {args.busy_processes} extra processes, --interval 1")
            busy_cmd = procmond_command(tmp / "busy", url, collector_id="bench-busy", interval=1)
            with (
                sleeping_children(args.busy_processes),
                spawn([*echo, ECHO_ASYNC, reply], tmp / "echo-async-2.log"),
                spawn(busy_cmd, tmp / "busy.log"),
            ):
                wait_subscribed(caller, ECHO_ASYNC)
                agent.wait_for("bench-busy", "ready", 60)
                wait_settled(caller, "bench-busy", 2, 120)
                base_busy = Series("echo-async-under-load")
                busy = Series("procmond-busy")
                topic = collector_topic("bench-busy")
                plan = [(base_busy, ECHO_ASYNC, False), (busy, topic, True)]
                interleave(caller, plan, args.busy_samples, args.busy_gap_ms / 1000)
            details["baseline_echo_async_under_load_ms"] = _stats(base_busy)
            details["procmond_busy_ms"] = _stats(busy)
            details["procmond_busy"] = analyse_procmond(busy)
            # The echo's samples against the same cycles: a slowdown both show is
            # the machine (cores busy); one only procmond shows is procmond's own.
            details["baseline_under_load_vs_cycles"] = overlap_report(
                base_busy, cycle_intervals(busy)
            )
        finally:
            caller.close()
    return _metrics(details), details


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _metrics(d: dict[str, Any]) -> list[dict[str, Any]]:
    base, idle = d["baseline_echo_async_ms"], d["procmond_idle_ms"]
    base_busy, busy = d["baseline_echo_async_under_load_ms"], d["procmond_busy_ms"]
    overlap = d["procmond_busy"]["samples_overlapping_cycle"]
    return [
        metric(
            "rpc_healthcheck_p50_idle",
            "ms",
            idle["p50"],
            baseline=base["p50"],
            target=f"<= {P50_FACTOR:g}x baseline",
            met=idle["p50"] <= P50_FACTOR * base["p50"],
        ),
        metric(
            "rpc_healthcheck_p99_idle",
            "ms",
            idle["p99"],
            baseline=base["p99"],
            target=f"< {P99_LIMIT_MS:g} ms",
            met=idle["p99"] < P99_LIMIT_MS,
        ),
        metric(
            "rpc_healthcheck_max_idle",
            "ms",
            idle["max"],
            baseline=base["max"],
            target="(reported)",
            met=None,
        ),
        metric(
            "rpc_healthcheck_p50_busy",
            "ms",
            busy["p50"],
            baseline=base_busy["p50"],
            target=f"<= {P50_FACTOR:g}x baseline",
            met=busy["p50"] <= P50_FACTOR * base_busy["p50"],
            note="baseline: echo interleaved with the busy series, under the same load",
        ),
        metric(
            "rpc_healthcheck_p99_busy",
            "ms",
            busy["p99"],
            baseline=base_busy["p99"],
            target=f"< {P99_LIMIT_MS:g} ms",
            met=busy["p99"] < P99_LIMIT_MS,
            note=f"{overlap} of {busy['n']} samples overlapped a collection cycle",
        ),
        metric(
            "rpc_healthcheck_max_busy",
            "ms",
            busy["max"],
            baseline=base_busy["max"],
            target="(reported)",
            met=None,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Parse options, run, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer samples and processes")
    parser.add_argument("--samples", type=int, help="round trips per idle-phase series")
    parser.add_argument("--busy-samples", type=int, help="round trips of the busy series")
    parser.add_argument("--busy-processes", type=int, help="extra sleeping processes")
    parser.add_argument("--gap-ms", type=float, default=1.0, help="pause between idle calls")
    parser.add_argument("--busy-gap-ms", type=float, default=5.0, help="pause in busy series")
    args = parser.parse_args(argv)
    args.samples = args.samples or (600 if args.quick else 2000)
    args.busy_samples = args.busy_samples or (800 if args.quick else 3000)
    args.busy_processes = args.busy_processes or (500 if args.quick else 1500)
    return run_benchmark("rpc", args.quick, lambda tmp: measure(args, tmp))


if __name__ == "__main__":
    sys.exit(main())
