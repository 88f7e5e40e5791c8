"""What the Prometheus endpoint costs (issue 13): idle CPU and RSS with metrics on against
off in one window, a scrape's duration, and whether scrapes slow the daemon's answers.

``python -m bench.bench_metrics [--quick]`` prints one JSON object.

* Idle: two ``procmond run`` side by side on one private redis-server (a
  :class:`bench.wire.MinimalAgent` accepts their Register), the same settings
  except ``--metrics-listen``, at the default 30 s interval and with
  ``--no-kernel-events`` (kernel events make idle CPU follow the host's own
  process churn, docs/performance.md "Kernel process events"; ``--kernel-events``
  keeps them). Once both are ready and their baseline is flushed: RSS (peak of
  1 s samples) and CPU (schedstat, % of one core) of each over the window
  (60 s; ``--quick`` 15 s), while the metrics-on daemon is scraped every 15 s
  (Prometheus's default interval). Issue 6's idle targets: < 0.5 % CPU, < 60 MB.
* Scrape: ``--scrapes`` (200) GET /metrics back to back, client-side duration
  (p50, p99), exposition size, and the daemon's CPU per scrape.
* Interference: HealthCheck round trips (``--calls``, 100) with nobody scraping,
  then with a thread scraping without pause; p50/p99 of each. A scrape that
  blocked the event loop would show in the second series.
* Agent: the reference agent's exposition for a fleet of 1,000 collectors
  (its collector and ``prometheus_client``'s text format, in this process),
  p50/p99 over the same number of renders.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Final

import psutil

from bench.bench_footprint import _cpu_s, observe
from bench.common import (
    MEASUREMENT_ERRORS,
    metric,
    private_redis,
    procmond_command,
    run_benchmark,
    say,
    spawn,
    summarize_ms,
    wait_until,
)
from bench.wire import Caller, MinimalAgent, collector_topic, request, response_topic

RSS_LIMIT_MB: Final = 60.0  # issue 6
CPU_LIMIT_PERCENT: Final = 0.5  # issue 6, of one core
#: Prometheus's default scrape interval.
SCRAPE_EVERY_S: Final = 15.0
CLIENT_ID: Final = "bench-metrics"
FLEET: Final = 1000


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return bytes(reply.read())


def health(caller: Caller, collector_id: str) -> dict[str, Any]:
    topic = collector_topic(collector_id)
    request_id, data = request("HealthCheck", None, client_id=CLIENT_ID, target=topic)
    reply: dict[str, Any] = json.loads(caller.call(topic, data, request_id.encode()))
    return reply


def round_trips(caller: Caller, collector_id: str, calls: int) -> list[float]:
    seconds = []
    for _ in range(calls):
        t0 = time.perf_counter()
        assert health(caller, collector_id)["status"] == "Success"
        seconds.append(time.perf_counter() - t0)
    return seconds


def scrape_while(url: str, stop: threading.Event, every: float) -> list[int]:
    """Scrape ``url`` every ``every`` seconds (0: back to back) until ``stop``; byte counts."""
    sizes = []
    while not stop.is_set():
        sizes.append(len(get(url)))
        if every:
            stop.wait(every)
    return sizes


def agent_exposition(renders: int) -> dict[str, Any]:
    """Render the agent's metrics for a fleet of :data:`FLEET` collectors, ``renders`` times."""
    from prometheus_client import CollectorRegistry, generate_latest

    from procmond.agent.schemas import HeartbeatFields
    from procmond.agent.tracker import Registration, Tracker
    from procmond.metrics.agent import AgentMetrics

    tracker = Tracker()
    for n in range(FLEET):
        cid = f"c{n:04d}"
        tracker.register(Registration(cid, "boot", 30_000, "host", n, "0.1.0"), 0.0)
        tracker.heartbeat(cid, HeartbeatFields(collector_id=cid, boot_id="boot", sequence=1), 1.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentMetrics(tracker, bus_connected=lambda: True, clock=lambda: 2.0))
    seconds = []
    size = 0
    for _ in range(renders):
        t0 = time.perf_counter()
        size = len(generate_latest(registry))
        seconds.append(time.perf_counter() - t0)
    return {"collectors": FLEET, "bytes": size, "render_ms": summarize_ms(seconds)}


def measure(args: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Both daemons idle side by side, then scrapes, then interference; (metrics, details)."""
    extra = [] if args.kernel_events else ["--no-kernel-events"]
    details: dict[str, Any] = {"window_s": args.window, "kernel_events": args.kernel_events}
    with private_redis(tmp / "redis") as server, MinimalAgent(server.url) as agent:
        caller = Caller(server.url, response_topic(CLIENT_ID))
        with socket.socket() as probe:  # a free port for the metrics-on daemon
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"http://127.0.0.1:{port}/metrics"
        off = procmond_command(tmp / "off", server.url, collector_id="bench-off", extra=extra)
        on = procmond_command(
            tmp / "on",
            server.url,
            collector_id="bench-on",
            extra=[*extra, "--metrics-listen", f"127.0.0.1:{port}"],
        )
        sleeper = [sys.executable, "-c", f"import time; time.sleep({args.window + 120})"]
        try:
            with (
                spawn(sleeper, tmp / "sleeper.log") as baseline,
                spawn(off, tmp / "off.log") as daemon_off,
                spawn(on, tmp / "on.log") as daemon_on,
            ):
                for cid in ("bench-off", "bench-on"):
                    agent.wait_for(cid, "ready", 60)

                    def settled(cid: str = cid) -> bool:
                        m = health(caller, cid)["payload"]["metrics"]
                        return bool(m["collection_cycles"] >= 1 and not m["wal_pending"])

                    wait_until(settled, 60, f"{cid}'s start-up cycle to be flushed", 0.2)
                say(
                    f"idle window: {args.window:g} s, metrics-on scraped every {SCRAPE_EVERY_S:g} s"
                )
                stop = threading.Event()
                sizes: list[int] = []
                scraper = threading.Thread(
                    target=lambda: sizes.extend(scrape_while(url, stop, SCRAPE_EVERY_S))
                )
                scraper.start()
                try:
                    procs = {
                        "metrics_off": psutil.Process(daemon_off.pid),
                        "metrics_on": psutil.Process(daemon_on.pid),
                        "baseline_sleep": psutil.Process(baseline.pid),
                    }
                    details["idle"] = observe(procs, args.window)
                finally:
                    stop.set()
                    scraper.join(30)
                details["idle_scrapes"] = len(sizes)

                say(f"{args.scrapes} scrapes back to back")
                proc_on = psutil.Process(daemon_on.pid)
                cpu0 = _cpu_s(proc_on)
                seconds = []
                size = 0
                for _ in range(args.scrapes):
                    t0 = time.perf_counter()
                    size = len(get(url))
                    seconds.append(time.perf_counter() - t0)
                cpu_per_scrape_ms = (_cpu_s(proc_on) - cpu0) / args.scrapes * 1000
                details["scrape"] = {
                    "bytes": size,
                    "duration_ms": summarize_ms(seconds),
                    "daemon_cpu_ms_per_scrape": round(cpu_per_scrape_ms, 3),
                }

                say(f"{args.calls} HealthChecks without, then with, scrapes back to back")
                quiet = round_trips(caller, "bench-on", args.calls)
                stop = threading.Event()
                busy_sizes: list[int] = []
                scraper = threading.Thread(
                    target=lambda: busy_sizes.extend(scrape_while(url, stop, 0))
                )
                scraper.start()
                try:
                    busy = round_trips(caller, "bench-on", args.calls)
                finally:
                    stop.set()
                    scraper.join(30)
                details["healthcheck_ms"] = {
                    "no_scrapes": summarize_ms(quiet),
                    "scraped_back_to_back": summarize_ms(busy),
                    "scrapes_meanwhile": len(busy_sizes),
                }
        finally:
            caller.close()
    say(f"agent exposition for {FLEET} collectors")
    details["agent"] = agent_exposition(args.scrapes)
    return _metrics(details), details


def _metrics(d: dict[str, Any]) -> list[dict[str, Any]]:
    on, off = d["idle"]["metrics_on"], d["idle"]["metrics_off"]
    scrape = d["scrape"]
    hc = d["healthcheck_ms"]
    kernel = "kernel events on" if d["kernel_events"] else "--no-kernel-events"
    return [
        metric(
            "idle_cpu_metrics_on",
            "% of one core",
            on["cpu_percent_of_one_core"],
            baseline=off["cpu_percent_of_one_core"],
            target=f"< {CPU_LIMIT_PERCENT:g} %",
            met=on["cpu_percent_of_one_core"] < CPU_LIMIT_PERCENT,
            note=f"baseline: the same daemon without --metrics-listen, same {d['window_s']:g} s "
            f"window; {d['idle_scrapes']} scrapes in it; {kernel}",
        ),
        metric(
            "idle_rss_metrics_on",
            "MB",
            on["rss_mb_peak"],
            baseline=off["rss_mb_peak"],
            target=f"< {RSS_LIMIT_MB:g} MB",
            met=on["rss_mb_peak"] < RSS_LIMIT_MB,
            note=f"peak; threads {on['threads']} vs {off['threads']}; USS {on['uss_mb']} "
            f"vs {off['uss_mb']} MB",
        ),
        metric(
            "scrape_duration_p50",
            "ms",
            scrape["duration_ms"]["p50"],
            baseline=None,
            target="(reported)",
            met=None,
            note=f"{scrape['duration_ms']['n']} GET /metrics back to back, client side; "
            f"{scrape['bytes']} bytes",
        ),
        metric(
            "scrape_duration_p99",
            "ms",
            scrape["duration_ms"]["p99"],
            baseline=scrape["duration_ms"]["p50"],
            target="(reported)",
            met=None,
            note="baseline: p50",
        ),
        metric(
            "scrape_daemon_cpu",
            "ms per scrape",
            scrape["daemon_cpu_ms_per_scrape"],
            baseline=None,
            target="(reported)",
            met=None,
        ),
        metric(
            "healthcheck_p99_while_scraped",
            "ms",
            hc["scraped_back_to_back"]["p99"],
            baseline=hc["no_scrapes"]["p99"],
            target="(reported)",
            met=None,
            note=f"baseline: no scrapes; {hc['scrapes_meanwhile']} scrapes during the series",
        ),
        metric(
            "agent_exposition_p99",
            "ms",
            d["agent"]["render_ms"]["p99"],
            baseline=d["agent"]["render_ms"]["p50"],
            target="(reported)",
            met=None,
            note=f"{d['agent']['collectors']} collectors, {d['agent']['bytes']} bytes; "
            "baseline: p50",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Parse options, run, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="15 s window, fewer scrapes")
    parser.add_argument("--window", type=float, help="idle observation window in seconds")
    parser.add_argument("--scrapes", type=int, help="scrapes timed back to back (default 200)")
    parser.add_argument("--calls", type=int, help="HealthChecks per series (default 100)")
    parser.add_argument(
        "--kernel-events", action="store_true", help="keep kernel events on in both daemons"
    )
    args = parser.parse_args(argv)
    args.window = args.window or (15.0 if args.quick else 60.0)
    args.scrapes = args.scrapes or (50 if args.quick else 200)
    args.calls = args.calls or (30 if args.quick else 100)
    return run_benchmark(
        "metrics",
        args.quick,
        lambda tmp: measure(args, tmp),
        errors=(*MEASUREMENT_ERRORS, psutil.Error),
    )


if __name__ == "__main__":
    sys.exit(main())
