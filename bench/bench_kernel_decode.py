"""Kernel event source: pyroute2's parser against a hand-written struct decoder, and exec storms.

Usage: ``python -m bench.bench_kernel_decode [--quick] [--execs N] [--shells K]``.
Needs root (the netlink process connector); otherwise it prints an error object.

In one run:

1. Capture: the real datagrams of a shell running N ``/bin/true`` (1,000).
2. Decode cost: both decoders over the same captured bytes, best of several
   rounds, in us per event (pyroute2 is the baseline).
3. Resolve cost: what the reader reads for an exec (cmdline, exe, stat,
   status through ``os``) against ``psutil.Process`` reading the same fields
   under ``oneshot()`` (the baseline), on a live process.
4. Storms, each a separate ``sh`` running N ``/bin/true storm-<marker>-<i>``
   (a ``while`` loop with shell arithmetic, so that the only children are the
   N execs): with the hand decoder and with pyroute2's; with the reader in
   SCHED_FIFO (the default) against nice -20 and nice 0; K shells in parallel (the
   highest rate here); and with the main thread busy in Python (the GIL the
   daemon's event loop would hold). Each reports the fraction of execs that
   produced an exec record, the fraction whose command line was resolved
   (carries the marker), and the storm's rate in execs/s.

Attribution: a storm's execs are the exec records of pids whose fork record
names a storm shell as parent, so a partial record (no cmdline) still counts
as seen. A storm ends when every shell's exit record has arrived (bounded
wait on an Event).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import MEASUREMENT_ERRORS, die_with_parent, metric, run_benchmark, say
from procmond.collect.kernel import KernelRecord, KernelSource, KernelUnavailable, read_exec
from procmond.collect.kernel_decode import (
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    PROC_EVENT_NONE,
    ProcEvent,
    decode_datagram,
)

Decoder = Callable[[bytes], list[ProcEvent]]
STORM = 'i=0; while [ "$i" -lt {n} ]; do i=$((i+1)); /bin/true storm-{marker}-$i; done'


def pyroute2_decoder() -> Decoder:
    """pyroute2's ProcEventMarshal, its messages mapped onto the same ProcEvent tuples."""
    from pyroute2.netlink.connector.cn_proc import ProcEventMarshal

    marshal = ProcEventMarshal()

    def decode(data: bytes) -> list[ProcEvent]:
        out: list[ProcEvent] = []
        for msg in marshal.parse(data):
            what = msg["what"]
            head = (what, msg["cpu"], msg["seq"], msg["ack"], msg["timestamp_ns"])
            if what == PROC_EVENT_FORK:
                out.append(
                    ProcEvent(*head, msg["child_tgid"], msg["child_pid"], msg["parent_tgid"], 0)
                )
            elif what == PROC_EVENT_EXIT:
                tail = (msg["process_pid"], msg["parent_tgid"], msg["exit_code"])
                out.append(ProcEvent(*head, msg["process_tgid"], *tail))
            elif what == PROC_EVENT_NONE:
                out.append(ProcEvent(*head, 0, 0, 0, 0))
            else:
                out.append(ProcEvent(*head, msg["process_tgid"], msg["process_pid"], 0, 0))
        return out

    return decode


class BenchSource(KernelSource):
    """The daemon's source with a chosen decoder, optionally keeping the raw datagrams."""

    def __init__(self, deliver: Callable[[list[KernelRecord]], None], decoder: Decoder) -> None:
        super().__init__(deliver)
        self.decoder = decoder
        self.captured: list[bytes] | None = None

    def _decode(self, data: bytes) -> list[ProcEvent]:
        if self.captured is not None:
            self.captured.append(data)
        return self.decoder(data)


def storm(
    decoder: Decoder,
    execs: int,
    shells: int,
    *,
    priority: str = "fifo",
    busy: bool = False,
    keep: list[bytes] | None = None,
) -> dict[str, Any]:
    """Run ``shells`` storms of ``execs`` each under a fresh source; seen/resolved/rate
    (``keep``: a list that receives every raw datagram)."""
    records: list[KernelRecord] = []
    shell_pids: set[int] = set()
    exited: set[int] = set()
    done = threading.Event()

    def deliver(batch: list[KernelRecord]) -> None:
        records.extend(batch)
        for r in batch:
            if r.kind == "exit" and r.pid in shell_pids:
                exited.add(r.pid)
                if exited == shell_pids:
                    done.set()

    source = BenchSource(deliver, decoder)
    if priority != "fifo":  # "nice-20" or "nice0": no real-time class
        source.reader_rt_priority = None
        source.reader_nice = -20 if priority == "nice-20" else None
    source.captured = keep
    source.start()
    marker = f"{os.getpid()}x{time.monotonic_ns()}"
    stop_busy = threading.Event()
    spinner = threading.Thread(target=_spin, args=(stop_busy,), daemon=True) if busy else None
    try:
        if spinner is not None:
            spinner.start()
        started = time.monotonic()
        procs = [
            subprocess.Popen(
                ["sh", "-c", STORM.format(n=execs, marker=marker)], preexec_fn=die_with_parent
            )
            for _ in range(shells)
        ]
        shell_pids.update(p.pid for p in procs)
        for p in procs:
            p.wait(timeout=300)
        elapsed = time.monotonic() - started
        if not done.wait(timeout=10):
            say("not every shell's exit record arrived within 10 s")
    finally:
        stop_busy.set()
        source.stop()
    kids = {r.pid for r in records if r.kind == "fork" and r.ppid in shell_pids}
    seen = [r for r in records if r.kind == "exec" and r.pid in kids]
    tag = f"storm-{marker}-"
    resolved = [r for r in seen if r.cmdline and any(a.startswith(tag) for a in r.cmdline)]
    total = execs * shells
    return {
        "execs": total,
        "seen": len(seen),
        "resolved": len(resolved),
        "seen_fraction": round(len(seen) / total, 4),
        "resolved_fraction": round(len(resolved) / total, 4),
        "rate_execs_per_s": round(total / elapsed, 1),
        "lost": source.lost,
        "overflows": source.overflows,
        "seq_gaps": source.seq_gaps,
    }


def _spin(stop: threading.Event) -> None:
    """Pure-Python work holding the GIL, as a busy event loop would."""
    while not stop.is_set():
        sum(range(1000))


def decode_cost_us(decoder: Decoder, datagrams: list[bytes], rounds: int) -> tuple[float, int]:
    """Best-of-``rounds`` decode time per event (us) and the number of events decoded."""
    best = float("inf")
    count = 0
    for _ in range(rounds):
        started = time.perf_counter()
        count = sum(len(decoder(d)) for d in datagrams)
        best = min(best, time.perf_counter() - started)
    return best / max(count, 1) * 1e6, count


def resolve_cost_us(rounds: int) -> tuple[float, float]:
    """(os reads, psutil) per exec-resolve on this live process, in us."""
    import psutil

    pid = os.getpid()

    def with_psutil() -> None:
        proc = psutil.Process(pid)
        with proc.oneshot():
            proc.cmdline(), proc.exe(), proc.ppid(), proc.uids(), proc.name(), proc.create_time()

    costs = []
    for run in (lambda: read_exec(pid), with_psutil):
        started = time.perf_counter()
        for _ in range(rounds):
            run()
        costs.append((time.perf_counter() - started) / rounds * 1e6)
    return costs[0], costs[1]


def measure(args: argparse.Namespace, _tmp: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Everything of the module docstring, in one run."""
    if os.geteuid() != 0:
        raise RuntimeError("needs root: the netlink process connector")
    try:
        hand: Decoder = decode_datagram
        pyroute2 = pyroute2_decoder()
    except ImportError as exc:
        raise RuntimeError(f"pyroute2 is not installed: {exc}") from exc
    say(f"capturing {args.execs} execs")
    datagrams: list[bytes] = []
    runs: dict[str, dict[str, Any]] = {"capture": storm(hand, args.execs, 1, keep=datagrams)}
    rounds = 5 if args.quick else 20
    hand_us, hand_n = decode_cost_us(hand, datagrams, rounds)
    py_us, py_n = decode_cost_us(pyroute2, datagrams, rounds)
    same = [hand(d) for d in datagrams] == [pyroute2(d) for d in datagrams]
    os_us, psutil_us = resolve_cost_us(200 if args.quick else 2000)
    say("storms")
    runs["hand"] = storm(hand, args.execs, 1)
    runs["pyroute2"] = storm(pyroute2, args.execs, 1)
    runs["hand_nice-20"] = storm(hand, args.execs, 1, priority="nice-20")
    runs["hand_nice0"] = storm(hand, args.execs, 1, priority="nice0")
    runs["hand_parallel"] = storm(hand, args.execs, args.shells)
    runs["hand_parallel_nice-20"] = storm(hand, args.execs, args.shells, priority="nice-20")
    runs["hand_busy_gil"] = storm(hand, args.execs, 1, busy=True)
    h, p, n20 = runs["hand"], runs["pyroute2"], runs["hand_nice-20"]
    hp, hp20, busy = runs["hand_parallel"], runs["hand_parallel_nice-20"], runs["hand_busy_gil"]
    metrics = [
        metric("decode_us_per_event", "us", round(hand_us, 3), baseline=round(py_us, 3),
               target="below pyroute2's", met=hand_us < py_us,
               note="hand-written struct decoder; baseline pyroute2 ProcEventMarshal"),
        metric("resolve_us_per_exec", "us", round(os_us, 2), baseline=round(psutil_us, 2),
               target="below psutil's", met=os_us < psutil_us,
               note="os.open/read/readlink under /proc/<pid>; baseline psutil oneshot()"),
        metric("storm_exec_seen_fraction", "fraction", h["seen_fraction"],
               baseline=p["seen_fraction"], target=">= 0.999", met=h["seen_fraction"] >= 0.999,
               note=f"hand decoder at {h['rate_execs_per_s']} execs/s; baseline pyroute2"),
        metric("storm_cmdline_resolved_fraction", "fraction", h["resolved_fraction"],
               baseline=p["resolved_fraction"], target=">= 0.90",
               met=h["resolved_fraction"] >= 0.90, note="baseline: pyroute2's decoder"),
        metric("storm_resolved_reader_fifo", "fraction", h["resolved_fraction"],
               baseline=n20["resolved_fraction"], target=">= 0.90",
               met=h["resolved_fraction"] >= 0.90,
               note=f"baseline: nice -20 (nice 0: {runs['hand_nice0']['resolved_fraction']})"),
        metric("parallel_exec_seen_fraction", "fraction", hp["seen_fraction"], baseline=None,
               target=">= 0.999", met=hp["seen_fraction"] >= 0.999,
               note=f"{args.shells} shells, {hp['rate_execs_per_s']} execs/s"),
        metric("parallel_cmdline_resolved_fraction", "fraction", hp["resolved_fraction"],
               baseline=hp20["resolved_fraction"], target=">= 0.90",
               met=hp["resolved_fraction"] >= 0.90, note="baseline: the reader at nice -20"),
        metric("busy_gil_cmdline_resolved_fraction", "fraction", busy["resolved_fraction"],
               baseline=h["resolved_fraction"], target="informational", met=None,
               note="main thread spinning in Python; baseline: idle main thread"),
    ]  # fmt: skip
    details = {
        "captured_datagrams": len(datagrams),
        "decoded_events": {"hand": hand_n, "pyroute2": py_n},
        "decoders_agree": same,
        "storms": runs,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    return metrics, details


def main(argv: list[str] | None = None) -> int:
    """Parse options, run, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="200-exec storms, fewer rounds")
    parser.add_argument("--execs", type=int, help="execs per storm shell (1000)")
    parser.add_argument("--shells", type=int, help="parallel shells for the highest rate (4)")
    args = parser.parse_args(argv)
    args.execs = args.execs or (200 if args.quick else 1000)
    args.shells = args.shells or 4
    return run_benchmark(
        "kernel_decode",
        args.quick,
        lambda tmp: measure(args, tmp),
        errors=(*MEASUREMENT_ERRORS, KernelUnavailable),
    )


if __name__ == "__main__":
    sys.exit(main())
