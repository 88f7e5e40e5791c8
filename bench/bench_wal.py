"""Benchmark the write-ahead log against plain ``os.write`` + ``fsync`` of the same bytes.

Run: ``.venv/bin/python -m bench.bench_wal`` (prints one JSON object).

A round is: append 10,000 payloads of 300 bytes in one call, ``sync()``, and
``ack_through()`` the last one (its ack frame is written at the next round's
sync). The baseline writes the same payload bytes to a temporary file with one
``os.write`` and one ``fsync``. Each figure is the median of several rounds,
after one warm-up round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from procmond.store.wal import WriteAheadLog


def bench_wal(directory: Path, batch: list[bytes], rounds: int) -> dict[str, float]:
    """Time append + sync + ack rounds; return the median timings in seconds."""
    append_s: list[float] = []
    total_s: list[float] = []
    with WriteAheadLog(directory) as wal:
        wal.open()
        for _ in range(rounds + 1):
            t0 = time.perf_counter()
            records = wal.append(batch)
            t1 = time.perf_counter()
            wal.sync()
            wal.ack_through(records[-1].seq)
            t2 = time.perf_counter()
            append_s.append(t1 - t0)
            total_s.append(t2 - t0)
    return {
        "append_s": statistics.median(append_s[1:]),
        "append_sync_ack_s": statistics.median(total_s[1:]),
    }


def bench_baseline(directory: Path, batch: list[bytes], rounds: int) -> float:
    """Time one os.write of the joined payloads plus fsync; return the median in seconds."""
    times: list[float] = []
    path = directory / "baseline.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(rounds + 1):
            t0 = time.perf_counter()
            os.write(fd, b"".join(batch))
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return statistics.median(times[1:])


def main() -> None:
    """Run both benchmarks and print the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    batch = [os.urandom(args.size) for _ in range(args.records)]
    with tempfile.TemporaryDirectory(prefix="bench-wal-") as tmp:
        wal = bench_wal(Path(tmp) / "wal", batch, args.rounds)
        baseline_s = bench_baseline(Path(tmp), batch, args.rounds)
    n = args.records
    result = {
        "records": n,
        "payload_bytes": args.size,
        "rounds": args.rounds,
        "wal_append_ms": round(wal["append_s"] * 1000, 3),
        "wal_append_sync_ack_ms": round(wal["append_sync_ack_s"] * 1000, 3),
        "wal_records_per_s": round(n / wal["append_sync_ack_s"]),
        "baseline_write_fsync_ms": round(baseline_s * 1000, 3),
        "baseline_records_per_s": round(n / baseline_s),
        "ratio_wal_over_baseline": round(wal["append_sync_ack_s"] / baseline_s, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
