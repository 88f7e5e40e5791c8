"""Run every benchmark module: ``python -m bench [--quick] [--only NAME ...]``.

Each ``bench/bench_*.py`` runs as its own subprocess, one after the other
(they measure the same two cores), with a time limit; its one JSON object is
collected. The document of all of them is printed on stdout and written to
``bench/results.json``; progress goes to stderr.

``--quick`` is passed to modules that take it; modules written without it
get the reduced arguments of :data:`QUICK_ARGS` instead. A module that
fails, prints no JSON or runs out of time is recorded as such and the others
still run; the exit status is then 1.

On the time limit (or Ctrl-C) the module gets SIGINT, so that its own
``finally`` blocks end what it started, and SIGKILL 20 s later; its children
also carry a parent-death signal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

from bench.common import die_with_parent, machine_info, say

BENCH_DIR: Final = Path(__file__).resolve().parent
RESULTS: Final = BENCH_DIR / "results.json"
#: Reduced arguments for modules without a ``--quick`` flag.
QUICK_ARGS: Final[dict[str, list[str]]] = {
    "bench_collection": ["--processes", "300", "--cycles", "3"],
    "bench_wal": ["--records", "2000", "--rounds", "3"],
    "bench_agent": ["--collectors", "1000", "--seconds", "3", "--no-search"],
}
#: Seconds a module may run (full, quick); the footprint one idles 60 s on purpose.
DEFAULT_LIMIT: Final = (300.0, 120.0)
LIMITS: Final[dict[str, tuple[float, float]]] = {
    "bench_footprint": (240.0, 90.0),
    "bench_rpc": (300.0, 120.0),
}
GRACE_S: Final = 20.0


def discover() -> list[str]:
    """The benchmark modules, by name, in a stable order."""
    return sorted(path.stem for path in BENCH_DIR.glob("bench_*.py"))


def arguments(name: str, quick: bool) -> list[str]:
    """The module's command-line arguments for this run."""
    if not quick:
        return []
    source = (BENCH_DIR / f"{name}.py").read_text(errors="replace")
    if '"--quick"' in source:
        return ["--quick"]
    return list(QUICK_ARGS.get(name, []))


def parse_output(stdout: str) -> dict[str, Any] | None:
    """The module's JSON object: the whole output, else its last line that parses."""
    with contextlib.suppress(ValueError):
        document = json.loads(stdout)
        if isinstance(document, dict):
            return document
    for line in reversed(stdout.strip().splitlines()):
        with contextlib.suppress(ValueError):
            document = json.loads(line)
            if isinstance(document, dict):
                return document
    return None


def run_module(name: str, quick: bool) -> dict[str, Any]:
    """Run one module under its time limit; its result or what went wrong."""
    args = arguments(name, quick)
    command = [sys.executable, "-m", f"bench.{name}", *args]
    limit = LIMITS.get(name, DEFAULT_LIMIT)[1 if quick else 0]
    say(f"{name}: {' '.join(command[1:])} (limit {limit:g} s)")
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=BENCH_DIR.parent,
        preexec_fn=die_with_parent,
    )
    timed_out = False
    try:
        try:
            stdout, _ = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.send_signal(signal.SIGINT)
            try:
                stdout, _ = proc.communicate(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, _ = proc.communicate()
    finally:
        if proc.poll() is None:  # Ctrl-C of the runner: let the module clean up, then kill
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    entry: dict[str, Any] = {
        "command": " ".join(["python", *command[1:]]),
        "returncode": proc.returncode,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    document = parse_output(stdout or "")
    if timed_out:
        entry["error"] = f"time limit of {limit:g} s exceeded"
    elif proc.returncode != 0:
        entry["error"] = f"exit status {proc.returncode}"
    elif document is None:
        entry["error"] = "no JSON object on stdout"
    if document is not None:
        entry["result"] = document
    return entry


def summary(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every metric row of every module that reports rows, tagged with the module."""
    rows = []
    for name, entry in results.items():
        for row in entry.get("result", {}).get("metrics", []) or []:
            if isinstance(row, dict):
                rows.append({"module": name, **row})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the modules, print and write the collected document."""
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run the benchmarks.")
    parser.add_argument("--quick", action="store_true", help="short runs (passed through)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these modules")
    args = parser.parse_args(argv)
    names = discover()
    if args.only:
        wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in args.only}
        names = [n for n in names if n in wanted]
    started = time.monotonic()
    document: dict[str, Any] = {
        "suite": "procmond benchmarks",
        "quick": args.quick,
        "command": "python -m bench" + (" --quick" if args.quick else ""),
        "machine": machine_info(),
        "modules": names,
        "results": {},
    }
    results: dict[str, dict[str, Any]] = document["results"]
    try:
        for name in names:
            results[name] = run_module(name, args.quick)
    except KeyboardInterrupt:
        say("interrupted: writing what was collected")
        document["interrupted"] = True
    document["summary"] = summary(results)
    document["failed_modules"] = [n for n, e in results.items() if "error" in e]
    document["targets_missed"] = [
        f"{row['module']}:{row['name']}" for row in document["summary"] if row.get("met") is False
    ]
    document["elapsed_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(document, indent=2)
    RESULTS.write_text(text + "\n")
    print(text, flush=True)
    say(f"written to {RESULTS}")
    return 1 if document["failed_modules"] or document.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
