"""Fan-in of ``procmond agent``: N collectors heartbeating every second through real Redis.

Run: ``.venv/bin/python -m bench.bench_agent [--collectors N] [--seconds S]``
(prints one JSON object).

One private ``redis-server`` (unix socket, no persistence) is started for the
whole run. For each N, in the same run:

* the agent under test runs in this process exactly as ``run_agent`` builds
  it (``RedisBus`` + :class:`~procmond.agent.Agent` + :class:`~procmond.agent.Tracker`
  with its 0.25 s lateness timer), printing nothing;
* a baseline process, a bare redis-py subscriber on the same pattern, counts
  the same messages (what a subscriber costs before any parsing);
* one or two publisher processes (two from 10,000 collectors on) send each
  collector's heartbeat once a second, spread over ``--slices`` pipelined
  bursts per second (realistic phases, not one burst); in the first second
  each heartbeat follows the collector's ``ready`` announcement (1 s interval).

Lag: publishers record (time, cumulative count) after each burst; the agent
and the baseline sample their processed counts every 10 ms; the lag of a
burst is how long until the consumer had processed everything sent up to it.
"Kept up" means every heartbeat was processed, the worst lag stayed under one
heartbeat interval and the agent reported nobody late. Unless ``--no-search``,
N then steps up (1000, 2000, 5000, 10000, ...) until the agent no longer
keeps up, the publishers cannot hold the schedule, or ``--max-collectors``.

All processes share this machine's CPUs (reported as ``cpus``): the figures
are what one host running Redis, the publishers and the agent sustains.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

from redis import Redis

from procmond.agent.service import Agent, AgentEvent, EventKind, Tracker
from procmond.bus.redis import RedisBus
from procmond.embedded import RedisServer

INTERVAL_S = 1.0
STEPS = (1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 200_000)
SAMPLE_S = 0.01
DRAIN_TIMEOUT_S = 5.0

Samples = list[tuple[float, int]]


# -- child processes -------------------------------------------------------------


def _client(url: str) -> Redis:
    return Redis.from_url(url, socket_timeout=30)


def ready_message(cid: str, boot: str, stamp: str) -> bytes:
    """The ``ready`` announcement of a collector (1 s heartbeat interval)."""
    interval_ms = int(INTERVAL_S * 1000)
    return json.dumps(
        {
            "collector_id": cid,
            "boot_id": boot,
            "state": "ready",
            "timestamp": stamp,
            "heartbeat_interval_ms": interval_ms,
        }
    ).encode()


def publisher(
    url: str,
    ids: list[str],
    seconds: int,
    slices: int,
    ready: EventType,
    go: EventType,
    results: Any,
) -> None:
    """Announce ready, then heartbeat every collector once per interval; report bursts."""
    client = _client(url)
    boot = os.urandom(8).hex()
    pipe = client.pipeline(transaction=False)
    channels = [f"control.health.heartbeat.{cid}".encode() for cid in ids]
    heads = [f'{{"collector_id":"{cid}","boot_id":"{boot}","sequence":'.encode() for cid in ids]
    tail = (
        b',"state":"ready","health_status":"Healthy","reasons":[],"metrics":'
        b'{"processes_collected":312,"events_published":4711,"buffer_level_percent":0.0,'
        b'"connection_status":"Connected","config_version":1}}'
    )
    ready.set()
    go.wait()
    t0 = time.time()
    bursts: Samples = []
    sent = 0
    behind = 0.0
    per_slice = [ids[i::slices] for i in range(slices)]
    index = {cid: i for i, cid in enumerate(ids)}
    for second in range(seconds):
        for s, members in enumerate(per_slice):
            due = t0 + second * INTERVAL_S + s * INTERVAL_S / slices
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            else:
                behind = max(behind, -delay)
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
            seq = b"%d" % (second + 1)
            middle = b',"timestamp":"' + now.encode() + b'"'
            for cid in members:
                i = index[cid]
                if second == 0:  # protocol section 7: ready, then the first heartbeat at once
                    pipe.publish(f"control.health.status.{cid}", ready_message(cid, boot, now))
                pipe.publish(channels[i], heads[i] + seq + middle + tail)
            pipe.execute()
            sent += len(members)
            bursts.append((time.time(), sent))
    results.put({"bursts": bursts, "sent": sent, "behind_s": behind, "t0": t0})
    client.close()


def baseline(url: str, ready: EventType, stop: EventType, results: Any) -> None:
    """A bare redis-py subscriber: count pmessages, sample the count every 10 ms."""
    client = _client(url)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    pubsub.psubscribe("control.health.heartbeat.*")
    while pubsub.get_message(timeout=1.0) is None:
        pass  # the psubscribe confirmation
    ready.set()
    cpu0 = time.process_time()
    count = 0
    samples: Samples = []
    last = 0.0
    while not stop.is_set():
        message = pubsub.get_message(timeout=SAMPLE_S / 2)
        if message is not None and message["type"] == "pmessage":
            count += 1
        now = time.time()
        if now - last >= SAMPLE_S:
            samples.append((now, count))
            last = now
    samples.append((time.time(), count))
    results.put({"samples": samples, "received": count, "cpu_s": time.process_time() - cpu0})
    pubsub.close()
    client.close()


# -- measurement -------------------------------------------------------------------


def lags(bursts: Samples, samples: Samples) -> list[float]:
    """For each (time, cumulative sent): seconds until the consumer's count reached it."""
    counts = [c for _, c in samples]
    out = []
    for sent_at, cumulative in bursts:
        i = bisect.bisect_left(counts, cumulative)
        out.append(samples[i][0] - sent_at if i < len(samples) else float("inf"))
    return out


def merge_bursts(per_publisher: list[Samples]) -> Samples:
    """Bursts of all publishers as one cumulative series in time order."""
    flat = sorted(
        (t, n - (pub[k - 1][1] if k else 0))
        for pub in per_publisher
        for k, (t, n) in enumerate(pub)
    )
    total = 0
    merged = []
    for t, n in flat:
        total += n
        merged.append((t, total))
    return merged


def summary(
    received: int, sent: int, bursts: Samples, samples: Samples, cpu_s: float, t0: float
) -> dict[str, Any]:
    """Throughput and lag figures of one consumer; ``t0`` is when publishing started."""
    lag = lags(bursts, samples)
    finite = [x for x in lag if x != float("inf")]
    end = samples[-1][0] if samples else t0
    reached = next((t for t, c in samples if c >= received), end)
    return {
        "processed": received,
        "ratio": round(received / sent, 6) if sent else None,
        "rate_per_s": round(received / (reached - t0), 1) if reached > t0 else None,
        "max_lag_s": round(max(lag), 4) if lag else None,
        "p50_lag_s": round(statistics.median(finite), 4) if finite else None,
        "p99_lag_s": round(statistics.quantiles(finite, n=100)[98], 4) if len(finite) > 1 else None,
        "cpu_percent": round(100 * cpu_s / (end - t0), 1) if end > t0 else None,
    }


async def run_once(
    url: str, collectors: int, seconds: int, publishers: int, slices: int
) -> dict[str, Any]:
    """One measurement at N collectors."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    events: list[AgentEvent] = []
    tracker = Tracker()
    bus = RedisBus(url, name="bench-agent")
    agent = Agent(bus, tracker, on_events=events.extend, service_id="bench-agent")
    await agent.start()
    await bus.start()
    if not await bus.wait_connected(timeout=10):
        raise RuntimeError("the agent could not connect to the bench's redis-server")
    stop_agent = asyncio.Event()
    timer = asyncio.create_task(agent.run(stop_agent))

    base_ready, base_stop = ctx.Event(), ctx.Event()
    base = ctx.Process(target=baseline, args=(url, base_ready, base_stop, results))
    base.start()
    ids = [f"c{i:06d}" for i in range(collectors)]
    go = ctx.Event()
    pubs = []
    readies = []
    for p in range(publishers):
        ready = ctx.Event()
        proc = ctx.Process(
            target=publisher, args=(url, ids[p::publishers], seconds, slices, ready, go, results)
        )
        proc.start()
        pubs.append(proc)
        readies.append(ready)
    for ready in [base_ready, *readies]:
        if not await asyncio.to_thread(ready.wait, 30):
            raise RuntimeError("a bench process did not start")
    before = tracker.heartbeats_total
    samples: Samples = []
    cpu0 = time.process_time()
    go.set()

    async def sample(until: Callable[[], bool]) -> None:
        while not until():
            samples.append((time.time(), tracker.heartbeats_total - before))
            await asyncio.sleep(SAMPLE_S)

    done = asyncio.Event()
    sampler = asyncio.create_task(sample(done.is_set))
    reports = [await asyncio.to_thread(results.get, True, seconds + 60) for _ in pubs]
    for proc in pubs:
        await asyncio.to_thread(proc.join, 10)
    sent = sum(r["sent"] for r in reports)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while tracker.heartbeats_total - before < sent and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(SAMPLE_S)  # polling the counter is the measurement
    done.set()
    await sampler
    samples.append((time.time(), tracker.heartbeats_total - before))
    cpu_s = time.process_time() - cpu0
    base_stop.set()
    base_report = await asyncio.to_thread(results.get, True, 30)
    await asyncio.to_thread(base.join, 10)
    stop_agent.set()
    await timer
    await agent.close()
    await bus.close()

    bursts = merge_bursts([r["bursts"] for r in reports])
    processed = tracker.heartbeats_total - before
    t0 = min(r["t0"] for r in reports)
    agent_figures = summary(processed, sent, bursts, samples, cpu_s, t0)
    counted = {kind.value: 0 for kind in (EventKind.LATE, EventKind.FAILED, EventKind.BUS_SUSPECT)}
    for event in events:
        if event.kind.value in counted:
            counted[event.kind.value] += 1
    agent_figures["events"] = counted
    agent_figures["lost_heartbeats"] = sum(r.lost for r in tracker.collectors.values())
    base_figures = summary(
        base_report["received"], sent, bursts, base_report["samples"], base_report["cpu_s"], t0
    )
    behind = max(r["behind_s"] for r in reports)
    kept_up = (
        processed >= sent
        and agent_figures["max_lag_s"] is not None
        and agent_figures["max_lag_s"] < INTERVAL_S
        and counted["late"] == 0
        and counted["failed"] == 0
    )
    return {
        "collectors": collectors,
        "publishers": publishers,
        "sent": sent,
        "offered_per_s": round(collectors / INTERVAL_S, 1),
        "publisher_behind_s": round(behind, 4),
        "agent": agent_figures,
        "baseline": base_figures,
        "kept_up": kept_up,
    }


async def bench(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """Run at --collectors, then step N up while the agent keeps up."""
    sizes = [args.collectors]
    if not args.no_search:
        sizes += [n for n in STEPS if args.collectors < n <= args.max_collectors]
    runs = []
    best = None
    limit = "max_collectors" if not args.no_search else "no_search"
    for n in sizes:
        publishers = args.publishers or (1 if n < 10_000 else 2)
        run = await run_once(url, n, args.seconds, publishers, args.slices)
        runs.append(run)
        if run["publisher_behind_s"] > INTERVAL_S / 2:
            limit = "publishers could not hold the schedule"
            break
        if not run["kept_up"]:
            limit = "agent fell behind"
            break
        best = n
    return {
        "benchmark": "agent_fan_in",
        "cpus": os.cpu_count(),
        "heartbeat_interval_s": INTERVAL_S,
        "seconds": args.seconds,
        "slices_per_second": args.slices,
        "max_collectors_kept_up": best,
        "stopped_because": limit,
        "runs": runs,
    }


def main() -> None:
    """Parse arguments, start a private redis-server, print the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--collectors", type=int, default=1000, help="first N (default 1000)")
    parser.add_argument("--seconds", type=int, default=5, help="heartbeat rounds per N")
    parser.add_argument(
        "--publishers",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help="publisher processes; 0 (default): 1 below 10,000 collectors, else 2",
    )
    parser.add_argument("--slices", type=int, default=10, help="pipelined bursts per second")
    parser.add_argument("--max-collectors", type=int, default=100_000)
    parser.add_argument("--no-search", action="store_true", help="only --collectors")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="pmd-bench-", dir="/tmp"))
    # A large pub/sub output buffer: we measure speed, not Redis's 32 MB cut-off.
    server = RedisServer(
        directory / "r",
        persistent=False,
        extra_args=("--client-output-buffer-limit", "pubsub 512mb 256mb 60"),
    )
    try:
        url = server.start()
        result = asyncio.run(bench(args, url))
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
