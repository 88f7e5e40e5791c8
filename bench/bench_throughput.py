"""Event throughput: events/s made durable by procmond's real pipeline.

``python -m bench.bench_throughput [--quick]`` prints one JSON object.

Measured: :class:`procmond.pipeline.EventPipeline` with a real
:class:`procmond.wal.WriteAheadLog` (on disk, in a temporary directory) and a
real :class:`procmond.bus.RedisBus` to a private redis-server (TCP loopback),
fed synthetic :class:`procmond.process_event.ProcessEvent` batches the way the
actor feeds it (``submit`` per batch, the flusher task running). An event
counts once it is durable end to end: encoded, appended to the log and
fsynced, XADD acknowledged by Redis, acknowledged in the log, and the log
trimmed (the final ack frame synced, acknowledged segments deleted). The
clock stops when the last one is.

Baseline, same run, same server: a raw pipelined XADD loop (redis.asyncio,
``transaction=False``, same batch size, same ``MAXLEN ~``) of exactly the
entries the pipeline wrote (pre-encoded, so the baseline is Redis's floor).
Rounds alternate baseline and pipeline; the median round of each is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Final

from bench.common import metric, private_redis, run_benchmark, say
from bench.events import delete_streams, raw_xadd_seconds, synthetic_events, wire_entries
from procmond.bus.redis import RedisBus
from procmond.collect.process_event import ProcessEvent
from procmond.store.pipeline import DEFAULT_BUFFER_CAPACITY, DEFAULT_STREAM_MAXLEN, EventPipeline
from procmond.store.wal import WriteAheadLog

TARGET_EVENTS_PER_S: Final = 20_000  # issue 6
COLLECTOR_ID: Final = "bench-throughput"


async def run_pipeline(
    url: str, directory: Path, events: list[ProcessEvent], batch: int
) -> dict[str, Any]:
    """One pipeline round; returns timings and the log's end state."""
    await delete_streams(url)
    wal = WriteAheadLog(directory)
    wal.open()
    bus = RedisBus(url, name="bench-throughput")
    await bus.start()
    pipeline = EventPipeline(
        wal,
        bus,
        collector_id=COLLECTOR_ID,
        boot_id=uuid.uuid4().hex,
        batch_size=batch,
        capacity=DEFAULT_BUFFER_CAPACITY,
        stream_maxlen=DEFAULT_STREAM_MAXLEN,
    )
    flusher: asyncio.Task[None] | None = None
    try:
        if not await bus.wait_connected(timeout=10):
            raise RuntimeError("the bus did not connect to the private redis-server")
        flusher = asyncio.create_task(pipeline.run())
        submit_s = 0.0
        t0 = time.perf_counter()
        for start in range(0, len(events), batch):
            # The actor pauses collection at a full buffer; so does this producer.
            # The pipeline offers no "below capacity" event to wait on, so poll.
            while pipeline.pending >= pipeline.capacity:  # noqa: ASYNC110
                await asyncio.sleep(0.0005)
            s0 = time.perf_counter()
            await pipeline.submit(events[start : start + batch])
            submit_s += time.perf_counter() - s0
        if not await pipeline.flush(timeout=120):
            raise RuntimeError(f"pipeline did not drain: {pipeline.pending} pending")
        await pipeline.sync()  # the last acknowledgement written: the log is trimmed
        elapsed = time.perf_counter() - t0
        return {
            "elapsed_s": elapsed,
            "submit_s": submit_s,
            "published": pipeline.events_published,
            "publish_failures": pipeline.publish_failures,
            "wal_pending_after": wal.pending,
            "wal_segments_after": wal.segment_count,
            "wal_bytes_after": wal.bytes_used,
        }
    finally:
        if flusher is not None:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        await pipeline.close()
        await bus.close()


async def measure(args: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], Any]:
    """Alternate baseline and pipeline rounds; return (metrics, details)."""
    events = synthetic_events(args.events)
    entries = wire_entries(COLLECTOR_ID, events)
    payload_bytes = statistics.fmean(len(f["event"]) for _, f in entries)
    pipeline_rounds: list[dict[str, Any]] = []
    baseline_s: list[float] = []
    with private_redis(tmp / "redis") as server:
        for round_no in range(args.rounds):
            say(f"round {round_no + 1}/{args.rounds}: {args.events} events")
            baseline_s.append(await raw_xadd_seconds(server.url, entries, args.batch))
            pipeline_rounds.append(
                await run_pipeline(server.url, tmp / f"wal-{round_no}", events, args.batch)
            )
    n = args.events
    pipe_s = statistics.median(r["elapsed_s"] for r in pipeline_rounds)
    base_s = statistics.median(baseline_s)
    pipe_rate = round(n / pipe_s)
    base_rate = round(n / base_s)
    complete = all(
        r["published"] == n and r["wal_pending_after"] == 0 and r["wal_segments_after"] == 1
        for r in pipeline_rounds
    )
    details = {
        "events_per_round": n,
        "rounds": args.rounds,
        "batch": args.batch,
        "event_json_bytes_mean": round(payload_bytes),
        "transport": "TCP loopback to a private redis-server; log on local disk (ext4), fsync",
        "pipeline_rounds": [
            {
                "events_per_s": round(n / r["elapsed_s"]),
                "elapsed_s": round(r["elapsed_s"], 3),
                "submit_share": round(r["submit_s"] / r["elapsed_s"], 3),
                **{k: v for k, v in r.items() if k not in ("elapsed_s", "submit_s")},
            }
            for r in pipeline_rounds
        ],
        "baseline_rounds_events_per_s": [round(n / s) for s in baseline_s],
        "every_event_published_and_log_trimmed": complete,
    }
    metrics = [
        metric(
            "event_throughput_durable",
            "events/s",
            pipe_rate,
            baseline=base_rate,
            target=f">= {TARGET_EVENTS_PER_S:,}",
            met=pipe_rate >= TARGET_EVENTS_PER_S and complete,
            note="baseline: raw pipelined XADD of the same entries (no log, no fsync)",
        )
    ]
    return metrics, details


def main(argv: list[str] | None = None) -> int:
    """Parse options, run, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer events, fewer rounds")
    parser.add_argument("--events", type=int, help="events per round")
    parser.add_argument("--rounds", type=int, help="rounds of baseline and pipeline")
    parser.add_argument("--batch", type=int, default=1000, help="events per submit and per XADD")
    args = parser.parse_args(argv)
    args.events = args.events or (20_000 if args.quick else 100_000)
    args.rounds = args.rounds or (2 if args.quick else 3)
    return run_benchmark("throughput", args.quick, lambda tmp: asyncio.run(measure(args, tmp)))


if __name__ == "__main__":
    sys.exit(main())
