"""The kernel source in a process of its own, so its reader never waits for the daemon.

Why a process. A ``/bin/true`` is gone a millisecond after its exec, and its
command line must be read from ``/proc`` before that. A reader *thread* in the
daemon shares the GIL with the event loop, which is busiest exactly during an
exec storm (it encodes, logs and sends three events per exec): measured here,
with the loop busy the thread resolved 8.7 % of a storm's command lines, and
in a live daemon under a storm 46 % of the events were partial. In a child of
its own, :class:`~procmond.collect.kernel.KernelSource`'s reader has a GIL to
itself (the child's main thread only waits), reads ``/proc`` at once, and
hands the resolved records to a writer thread, so a slow pipe never delays a
read either.

Protocol on the child's stdout, one JSON object per line:
``{"ready": rcvbuf}`` or ``{"unavailable": reason}`` first, then
``{"records": [...], "lost": n}`` per batch (``lost`` is the child source's
running total). The child dies with the daemon (``PR_SET_PDEATHSIG``) and is
in a session of its own, so a terminal's Ctrl-C reaches the daemon only.

:class:`KernelProcess` has :class:`~procmond.collect.kernel.KernelSource`'s
interface (``start``, ``stop``, ``received``, ``lost``, ``lost_since_last``),
so the daemon takes either.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any, Final

from procmond.children import death_signal_preexec
from procmond.collect.kernel import KernelRecord, KernelSource, KernelUnavailable
from procmond.collect.kernel_decode import ReaderState

__all__ = ["KernelProcess", "main"]

#: How long the child may take to say ready (it imports, opens and binds the socket).
START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 3.0
#: One read of the child's pipe (a pipe holds 64 KiB).
PIPE_READ_BYTES: Final = 256 * 1024
#: How often the child's main thread wakes to run signal handlers and see its parent.
MAIN_WAKE_S: Final = 0.5
#: The child's GIL switch interval (Python's default is 5 ms).
SWITCH_INTERVAL_S: Final = 0.0002

Deliver = Callable[[list[KernelRecord]], None]


class KernelProcess(ReaderState):
    """Runs the kernel source in a child process and delivers its records from a thread."""

    def __init__(
        self,
        deliver: Deliver,
        *,
        rcvbuf_bytes: int = 8 * 1024 * 1024,
        command: list[str] | None = None,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        """``command`` replaces the child's command line (tests); it gets ``rcvbuf_bytes``."""
        self._deliver = deliver
        self._rcvbuf_bytes = rcvbuf_bytes
        self._command = command or [sys.executable, "-m", "procmond.collect.kernel_process"]
        self._start_timeout = start_timeout
        self._child: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._child_lost = 0
        self._ended_early = 0
        self._eof = False
        self._lost_reported = 0
        #: Records delivered.
        self.received = 0
        #: The receive buffer the kernel granted the child's socket.
        self.rcvbuf = 0

    @property
    def running(self) -> bool:
        """Whether the child is read and has not ended."""
        return not self._eof and super().running

    @property
    def lost(self) -> int:
        """Events the kernel dropped (the child's count), plus one if the child died."""
        return self._child_lost + self._ended_early

    def start(self) -> None:
        """Start the child and wait until it listens (:class:`KernelUnavailable` says why not)."""
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Start the child, at once. Call it from a thread that lives as long as the child
        (the death signal fires when the forking thread ends): the daemon's main thread."""
        parent = os.getpid()
        child = subprocess.Popen(
            [*self._command, str(self._rcvbuf_bytes)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=lambda: death_signal_preexec(parent),
        )
        self._child = child

    def wait_ready(self) -> None:
        """Block until the child listens (it imports and binds: ~0.4 s); then read it.

        Raises :class:`KernelUnavailable` with the child's reason. Call it off the event
        loop: nothing else would be served meanwhile."""
        child = self._child
        assert child is not None, "spawn() first"
        assert child.stdout is not None
        first = _first_line(child.stdout, self._start_timeout)
        hello = json.loads(first) if first else {}
        if "ready" not in hello:
            self._child = None
            _end(child)
            reason = hello.get("unavailable") or "the kernel reader process did not start"
            raise KernelUnavailable(str(reason))
        self.rcvbuf = int(hello["ready"])
        self._thread = threading.Thread(
            target=self._read, args=(child.stdout,), name="procmond-kernel-pipe", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL) and the thread reading it."""
        child, self._child = self._child, None
        if child is not None:
            _end(child)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)

    def _read(self, stream: IO[bytes]) -> None:
        """Deliver what the child wrote, every line that is in the pipe as one batch (a
        storm sends many small lines; one hand-over to the loop each cost more than the
        records themselves: py-spy showed this thread at 21 % of the daemon's samples)."""
        fd = stream.fileno()
        rest = b""
        while chunk := os.read(fd, PIPE_READ_BYTES):
            *lines, rest = (rest + chunk).split(b"\n")
            records: list[KernelRecord] = []
            lost = self._child_lost
            for line in lines:
                message = json.loads(line)
                records.extend(_record(r) for r in message["records"])
                lost = int(message["lost"])
            with self._lock:
                self._child_lost = lost
                self.received += len(records)
            if records:
                self._deliver(records)
        self._eof = True
        if self._child is not None:  # ended without stop(): whatever came after is lost
            with self._lock:
                self._ended_early += 1
            self._deliver([])  # wakes the daemon's merger, which sees the loss and the end


def _record(fields: dict[str, Any]) -> KernelRecord:
    """A record back from its JSON form (the command line was a list)."""
    cmdline = fields["cmdline"]
    return KernelRecord(**{**fields, "cmdline": None if cmdline is None else tuple(cmdline)})


def _first_line(stream: IO[bytes], timeout: float) -> bytes:
    """The child's first line, or b"" when it said nothing in ``timeout`` seconds."""
    lines: queue.Queue[bytes] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return b""


def _end(child: subprocess.Popen[bytes]) -> None:
    child.terminate()
    try:
        child.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(STOP_TIMEOUT_S)


def main(argv: list[str]) -> int:
    """The child: listen to the kernel, write resolved records to stdout until SIGTERM."""
    out = sys.stdout.buffer
    # The reader must get the GIL back at once when a datagram arrives, not after the
    # writer's 5 ms default slice: a millisecond-long process is gone by then.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    outbox: queue.Queue[list[KernelRecord] | None] = queue.Queue()
    source = KernelSource(outbox.put, rcvbuf_bytes=int(argv[0]) if argv else 8 * 1024 * 1024)
    try:
        source.start()
    except KernelUnavailable as exc:
        out.write(json.dumps({"unavailable": exc.reason}).encode() + b"\n")
        out.flush()
        return 0
    # A plain flag, not an Event: the handler runs in the main thread, possibly while
    # it holds an Event's lock (Event.set there deadlocked: a py-spy dump of an orphaned
    # child showed the handler waiting for the lock its own wait() held).
    done = [False]

    def on_sigterm(signum: int, frame: object) -> None:
        done[0] = True

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    out.write(json.dumps({"ready": source.rcvbuf}).encode() + b"\n")
    out.flush()

    def write() -> None:  # off the reader's path: a full pipe never delays a /proc read
        while (batch := outbox.get()) is not None:
            while True:  # what queued meanwhile goes in the same line
                try:
                    more = outbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    outbox.put(None)
                    break
                batch.extend(more)
            records = [dataclasses.asdict(r) for r in batch]
            line = json.dumps({"records": records, "lost": source.lost}, separators=(",", ":"))
            try:
                out.write(line.encode("utf-8", "surrogateescape") + b"\n")
                out.flush()
            except BrokenPipeError:
                done[0] = True
                return

    writer = threading.Thread(target=write, name="procmond-kernel-write", daemon=True)
    writer.start()
    parent = os.getppid()
    # Wake now and then: the handler only sets a flag, and the parent check covers a
    # death signal that never came.
    while not done[0] and os.getppid() == parent:
        time.sleep(MAIN_WAKE_S)
    source.stop()
    outbox.put(None)
    writer.join(STOP_TIMEOUT_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
