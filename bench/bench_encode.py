"""Benchmark the pipeline's log step (number, encode, append) against the bare log append.

Run: ``.venv/bin/python -m bench.bench_encode`` (prints one JSON object).

``EventPipeline._append`` is what the log thread does for every event before
Redis sees it: ``ProcessEvent.to_wire``, JSON encoding, the log payload, the
append, and the XADD entry built from the same bytes. The baseline is
``WriteAheadLog.append`` of the very payloads that step produces, already
encoded, so the ratio is the cost of encoding over the cost of logging, in
the same run. Both run on a fresh log in a temporary directory without
fsync (the sync is the same for both and is measured by ``bench_wal``).
Figures are per event, the best of several rounds after a warm-up round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from bench.common import machine_info
from bench.events import synthetic_events
from procmond.bus.memory import MemoryBroker, MemoryBus
from procmond.store.pipeline import EventPipeline, _encode
from procmond.store.wal import WriteAheadLog

COLLECTOR_ID = "bench-encode"
BOOT_ID = "0" * 32
BATCH = 1000


def _fresh_log(directory: Path) -> WriteAheadLog:
    wal = WriteAheadLog(directory, max_total_bytes=1 << 30)
    wal.open()
    return wal


async def pipeline_seconds(root: Path, count: int, rounds: int) -> float:
    """Best wall time of ``_append`` over ``count`` events, in batches of BATCH."""
    events = synthetic_events(count)
    best = float("inf")
    for n in range(rounds + 1):
        wal = _fresh_log(root / f"pipeline-{n}")
        pipeline = EventPipeline(
            wal, MemoryBus(MemoryBroker()), collector_id=COLLECTOR_ID, boot_id=BOOT_ID
        )
        start = time.perf_counter()
        for i in range(0, count, BATCH):
            pipeline._append(events[i : i + BATCH])
        elapsed = time.perf_counter() - start
        wal.close()
        if n:  # round 0 warms up
            best = min(best, elapsed)
    return best


def baseline_seconds(root: Path, count: int, rounds: int) -> float:
    """Best wall time of appending the same payloads, already encoded."""
    events = synthetic_events(count)
    payloads = [_encode(COLLECTOR_ID, BOOT_ID, i + 1, e) for i, e in enumerate(events)]
    best = float("inf")
    for n in range(rounds + 1):
        wal = _fresh_log(root / f"baseline-{n}")
        start = time.perf_counter()
        for i in range(0, count, BATCH):
            wal.append(payloads[i : i + BATCH])
        elapsed = time.perf_counter() - start
        wal.close()
        if n:
            best = min(best, elapsed)
    return best


def main() -> None:
    """Run both and print the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2,000 events, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.events, args.rounds = 2_000, 2
    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        root = Path(tmp)
        pipeline_s = asyncio.run(pipeline_seconds(root, args.events, args.rounds))
        baseline_s = baseline_seconds(root, args.events, args.rounds)
    per_event_us = pipeline_s / args.events * 1e6
    baseline_us = baseline_s / args.events * 1e6
    print(
        json.dumps(
            {
                "benchmark": "encode",
                "quick": args.quick,
                "metrics": [
                    {
                        "name": "log_step_per_event",
                        "unit": "us",
                        "measured": round(per_event_us, 2),
                        "baseline": round(baseline_us, 2),
                        "ratio": round(per_event_us / baseline_us, 2),
                        "target": "(reported)",
                        "met": None,
                        "note": "baseline: WriteAheadLog.append of the same payloads, pre-encoded",
                    }
                ],
                "details": {"events": args.events, "rounds": args.rounds, "batch": BATCH},
                "machine": machine_info(),
            }
        )
    )


if __name__ == "__main__":
    main()
