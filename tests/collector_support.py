"""Helpers shared by the collector tests: real children that signal readiness, and
picking one process's events out of a cycle."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from procmond.collect.collector import CycleResult
from procmond.collect.process_event import ProcessEvent

SECRET = "hunter2-s3cr3t"
BLOCK_ON_STDIN = "import sys; print('ready', flush=True); sys.stdin.readline(); sys.stdin.read()"


@contextmanager
def child(
    code: str = BLOCK_ON_STDIN, *args: str, pass_fds: tuple[int, ...] = ()
) -> Iterator[subprocess.Popen[str]]:
    """A Python child that has printed 'ready' (so it has exec'd); ended and reaped on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=pass_fds,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def events_for(result: CycleResult, pid: int) -> list[ProcessEvent]:
    """The events of one cycle that concern ``pid``."""
    return [e for e in result.events if e.pid == pid]


def only_event(result: CycleResult, pid: int, kind: str) -> ProcessEvent:
    """The single event of ``kind`` for ``pid`` in a cycle."""
    found = [e for e in events_for(result, pid) if e.event_type == kind]
    assert len(found) == 1, (kind, pid, events_for(result, pid))
    return found[0]


def end(proc: subprocess.Popen[str]) -> None:
    """Let a blocked child finish (EOF on stdin) and reap it."""
    proc.communicate(input="\n", timeout=30)
