"""Kernel process events: fork, exec and exit from the netlink process connector.

Theory of operation. :class:`KernelSource` opens a ``NETLINK_CONNECTOR``
socket, joins the process-events group, asks the kernel to LISTEN and waits
for its ack (the kernel answers an unprivileged or namespaced listener with
an error or not at all: either is :class:`KernelUnavailable` with the
reason). A daemon reader thread then owns the socket and hands each batch to
``deliver`` (the integrator wraps it in ``loop.call_soon_threadsafe``).

The kernel sends one event per datagram, and an exec carries no program or
arguments, only a pid: a ``/bin/true`` is gone a millisecond later. So the
thread reads ``/proc/<pid>`` for an exec (cmdline first, then exe, stat,
status) right after decoding its datagram, before the next ``recv``; a fork
reads only ``/proc/<pid>/stat``; an exit reads nothing. The reads are plain
``os.open``/``os.read``/``os.readlink`` relative to an open ``/proc/<pid>``
directory, so a recycled pid cannot answer for the process that exited.
The thread drains what the socket holds without waiting (at most
:data:`BATCH_MAX` datagrams), then redacts and bounds the command lines,
builds the records and delivers them as one batch: a record is held back
only while already-queued datagrams are read, never for more to arrive.

Only thread-group leaders are processes: thread forks and exits are dropped,
as are the event kinds we do not report (uid, gid, sid, ptrace, comm,
coredump), without being counted. Losses are counted two ways (see
:mod:`procmond.collect.kernel_decode`): ENOBUFS from ``recv`` (each means at
least one event dropped: the socket buffer overflowed) and gaps in the
kernel's per-CPU message sequence (the exact number, including drops no
ENOBUFS reports). ``lost`` is the larger of the two, and
:meth:`KernelSource.lost_since_last` tells the integrator to resync.

Measured by ``bench/bench_kernel_decode.py`` (2 busy cores, one run, 1,000
``/bin/true`` at ~820 execs/s): the hand-written ``struct`` decoder takes
2.1 us per event, pyroute2's ProcEventMarshal 21.6 us on the same 3,030
datagrams (same results), so we keep ours and pyroute2 is no dependency. The
reads cost 51 us per exec against 283 us through psutil. Every exec was seen;
the command line was resolved for 99.4 % with the reader in SCHED_FIFO, 99.7 %
at nice -20 (85 % in other runs) and 15.5 % at nice 0; 4 parallel shells: 99.8 %.
Known limit: the reader shares the GIL. With the main thread spinning in
Python, 8.7 % were resolved: an event loop busy for milliseconds delays it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Final

from procmond.collect.kernel_decode import (
    CN_IDX_PROC,
    NETLINK_CONNECTOR,
    PROC_CN_MCAST_IGNORE,
    PROC_CN_MCAST_LISTEN,
    PROC_EVENT_EXEC,
    PROC_EVENT_FORK,
    PROC_EVENT_NONE,
    ExecReads,
    KernelRecord,
    MalformedDatagramError,
    ProcEvent,
    ReaderState,
    SeqTracker,
    control_message,
    decode_datagram,
    is_process_event,
    make_record,
    refusal_reason,
)

__all__ = [
    "BATCH_MAX",
    "READER_NICE",
    "READER_RT_PRIORITY",
    "KernelRecord",
    "KernelSource",
    "KernelUnavailable",
    "read_exec",
    "read_stat",
]

log = logging.getLogger(__name__)

#: Datagrams drained per batch: at ~10 us each a record waits < 1 ms for its
#: batch, and one ``call_soon_threadsafe`` serves up to 64 records.
BATCH_MAX: Final = 64
_RECV_BYTES: Final = 4096  # one event is 76 bytes
_ACK_TIMEOUT_S: Final = 1.0  # the kernel acks at once; silence means it ignores us
_JOIN_TIMEOUT_S: Final = 2.0
#: The reader's scheduling. Woken at normal priority on a loaded host, it is
#: often scheduled after a millisecond-long process has gone (module docstring:
#: measured). SCHED_FIFO at the lowest real-time priority runs it at once; it
#: blocks in poll() whenever the socket is empty, and the kernel's RT throttling
#: caps it at 95 % of a CPU under a flood. Without CAP_SYS_NICE: nice -20, else as is.
READER_RT_PRIORITY: Final = 1
READER_NICE: Final = -20
_SO_RCVBUFFORCE: Final = 33  # <asm-generic/socket.h>; Python has no constant for it
#: Where the kernel shows processes (the collector's scan reads the same).
PROC: Final = "/proc"
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CMDLINE_CHUNK: Final = 16 * 1024
_DELETED: Final = " (deleted)"

Deliver = Callable[[list[KernelRecord]], None]
# A decoded process event and what was read for it at once (exec: ExecReads; fork: stat).
_Pending = list[tuple[ProcEvent, object]]


class KernelUnavailable(Exception):  # noqa: N818 - the name the integrator was promised
    """Why the kernel source cannot run here, in one line (``.reason``): refused (EPERM,
    EACCES), not Linux, not in the initial PID/user/network namespace, connector missing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KernelSource(ReaderState):
    """The netlink process connector, read by a daemon thread; see the module docstring."""

    def __init__(self, deliver: Deliver, *, rcvbuf_bytes: int = 8 * 1024 * 1024) -> None:
        self._deliver = deliver
        self._rcvbuf_bytes = rcvbuf_bytes
        self._sock: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._early: list[bytes] = []
        self._nonce = ((os.getpid() << 12) ^ id(self)) & 0x7FFFFFFF  # names our ack
        self._tracker = SeqTracker()
        self._lock = threading.Lock()
        self._lost_reported = 0
        #: The reader thread's SCHED_FIFO priority and, failing that, nice (None: leave it).
        self.reader_rt_priority: int | None = READER_RT_PRIORITY
        self.reader_nice: int | None = READER_NICE
        #: Records delivered.
        self.received = 0
        #: ENOBUFS errors from ``recv`` (each: at least one event lost).
        self.overflows = 0
        #: Events missing from the kernel's per-CPU sequence numbers.
        self.seq_gaps = 0
        #: Reader threads ended by an error (each counts as a loss: nothing is read after it).
        self.failures = 0
        #: Datagrams that were not a complete event (none expected).
        self.malformed = 0
        #: The receive buffer the kernel granted (``getsockopt(SO_RCVBUF)``), 0 before start.
        self.rcvbuf = 0

    @property
    def lost(self) -> int:
        """Events the kernel dropped: the sequence gaps, or at least one per ENOBUFS
        (plus one per reader failure)."""
        return max(self.seq_gaps, self.overflows) + self.failures

    def start(self) -> None:
        """Listen to the kernel and start the reader thread; KernelUnavailable says why not."""
        if self._thread is not None:
            raise RuntimeError("KernelSource.start() called twice")
        if not sys.platform.startswith("linux"):
            raise KernelUnavailable(f"not Linux ({sys.platform}): no netlink process connector")
        sock = _open_socket(self._rcvbuf_bytes)
        try:
            self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            self._early = _listen(sock, self._nonce)
            self._wake = socket.socketpair()
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="procmond-kernel", daemon=True)
        self._thread.start()
        log.debug("kernel process events: listening, receive buffer %d bytes", self.rcvbuf)

    def stop(self) -> None:
        """Send IGNORE, wake and join the reader (at most 2 s); it closes the socket."""
        thread, sock, wake = self._thread, self._sock, self._wake
        if thread is None or sock is None or wake is None:
            return
        self._stopping.set()
        # OSError: the socket was closed by a reader that failed; nothing to undo then.
        with contextlib.suppress(OSError):
            sock.send(control_message(PROC_CN_MCAST_IGNORE, self._nonce))
        with contextlib.suppress(OSError):
            wake[1].send(b"x")
        thread.join(_JOIN_TIMEOUT_S)
        if thread.is_alive():
            log.warning(
                "kernel reader did not stop within %g s (deliver blocked?)", _JOIN_TIMEOUT_S
            )

    def _decode(self, data: bytes) -> list[ProcEvent]:
        """The datagram's events (a hook: the benchmark substitutes pyroute2's parser)."""
        return decode_datagram(data)

    def _run(self) -> None:
        """The reader thread: drain, resolve, deliver, wait; owns and closes the socket."""
        sock, wake = self._sock, self._wake
        assert sock is not None
        assert wake is not None
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(wake[0].fileno(), select.POLLIN)
        pending: _Pending = []
        self._raise_priority()
        try:
            for data in self._early:
                self._take(data, pending)
            self._early = []
            while not self._stopping.is_set():
                drained = self._drain(sock, pending)
                if pending:
                    self._hand_over(pending)
                    pending = []
                if drained:
                    poller.poll()
        except Exception:
            log.exception("kernel process events stopped: the reader failed")
            self.failures += 1  # whatever follows is unseen: the integrator must resync
        finally:
            sock.close()
            wake[0].close()
            wake[1].close()

    def _raise_priority(self) -> None:
        """SCHED_FIFO for this thread (pid 0: the calling thread), else nice; best effort."""
        try:
            if self.reader_rt_priority is not None:
                param = os.sched_param(self.reader_rt_priority)
                os.sched_setscheduler(0, os.SCHED_FIFO, param)
            elif self.reader_nice is not None:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.reader_nice)
        except OSError as exc:
            if self.reader_rt_priority is not None and self.reader_nice is not None:
                self.reader_rt_priority = None
                return self._raise_priority()
            log.debug("kernel reader keeps its priority: %s", exc)
        return None

    def _drain(self, sock: socket.socket, pending: _Pending) -> bool:
        """Read what the socket holds now (up to BATCH_MAX); True when it ran empty."""
        for _ in range(BATCH_MAX):
            try:
                data = sock.recv(_RECV_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overflows += 1  # >= 1 event dropped; the sequence gaps say how many
                continue
            self._take(data, pending)
        return False

    def _take(self, data: bytes, pending: _Pending) -> None:
        """Decode one datagram, check its sequence and read /proc at once for what needs it."""
        try:
            events = self._decode(data)
        except MalformedDatagramError as exc:
            self.malformed += 1
            log.debug("kernel process events: malformed datagram: %s", exc)
            return
        for event in events:
            # Every message counts in its CPU's run, acks (ours and others') included.
            self.seq_gaps += self._tracker.missing(event.cpu, event.seq)
            if not is_process_event(event):
                continue
            if event.what == PROC_EVENT_EXEC:
                pending.append((event, read_exec(event.tgid)))
            elif event.what == PROC_EVENT_FORK:
                pending.append((event, read_stat(event.tgid)))
            else:
                pending.append((event, None))

    def _hand_over(self, pending: _Pending) -> None:
        """Build the batch's records and deliver them; a failing deliver is logged, not fatal."""
        # CLOCK_MONOTONIC to wall clock, measured per batch so a stepped clock is followed.
        offset = time.time() - time.monotonic_ns() / 1e9
        batch = [make_record(event, reads, offset) for event, reads in pending]
        self.received += len(batch)
        try:
            self._deliver(batch)
        except Exception:
            log.exception("kernel process events: deliver failed; %d records dropped", len(batch))


def read_exec(pid: int) -> ExecReads:
    """cmdline (None when empty: a zombie), exe, stat and status of ``pid``, read now."""
    try:
        dir_fd = os.open(f"{PROC}/{pid}", _DIR_FLAGS)
    except OSError:
        return None, None, None, None
    try:
        cmdline = _read("cmdline", dir_fd, _CMDLINE_CHUNK)  # first: gone at exit_mm()
        try:
            exe: str | None = _clean_exe(os.readlink("exe", dir_fd=dir_fd))
        except OSError:
            exe = None
        return cmdline, exe, _read("stat", dir_fd), _read("status", dir_fd)
    finally:
        os.close(dir_fd)


def read_stat(pid: int) -> bytes | None:
    """``/proc/<pid>/stat``, or None when the process is gone."""
    return _read(f"{PROC}/{pid}/stat")


def _read(path: str, dir_fd: int | None = None, chunk: int = 0) -> bytes | None:
    """A procfs file: one 4 KiB read (stat; status has Uid in its first 4 KiB), or with
    ``chunk`` read to its end (a command line may be megabytes); None if unreadable or empty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not chunk:
            return os.read(fd, 4096) or None
        parts = [os.read(fd, chunk)]
        while len(parts[-1]) == chunk:
            parts.append(os.read(fd, chunk))
        return b"".join(parts) or None
    except OSError:
        return None
    finally:
        os.close(fd)


def _clean_exe(path: str) -> str | None:
    """The exe link as psutil reports it: cut at a NUL, without a ``" (deleted)"`` suffix."""
    path = path.split("\x00")[0]
    if path.endswith(_DELETED) and not os.path.exists(path):
        path = path[: -len(_DELETED)]
    return path or None


def _open_socket(rcvbuf_bytes: int) -> socket.socket:
    """The connector socket, bound to the process-events group, its buffer raised."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    except OSError as exc:
        raise KernelUnavailable(
            refusal_reason("socket(AF_NETLINK, NETLINK_CONNECTOR)", exc)
        ) from exc
    try:
        try:  # root (CAP_NET_ADMIN) may pass net.core.rmem_max; others are capped by it
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf_bytes)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
        sock.bind((0, CN_IDX_PROC))
    except OSError as exc:
        sock.close()
        raise KernelUnavailable(refusal_reason("binding the process-events group", exc)) from exc
    return sock


def _listen(sock: socket.socket, nonce: int) -> list[bytes]:
    """Send LISTEN and wait for the kernel's ack; the datagrams read meanwhile, ack included."""
    try:
        sock.send(control_message(PROC_CN_MCAST_LISTEN, nonce))
    except OSError as exc:
        raise KernelUnavailable(refusal_reason("sending PROC_CN_MCAST_LISTEN", exc)) from exc
    early: list[bytes] = []
    deadline = time.monotonic() + _ACK_TIMEOUT_S
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(_RECV_BYTES)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    continue
                if isinstance(exc, TimeoutError):
                    break
                raise KernelUnavailable(refusal_reason("reading the LISTEN ack", exc)) from exc
            early.append(data)
            try:
                events = decode_datagram(data)
            except MalformedDatagramError:
                continue
            for event in events:
                if event.what == PROC_EVENT_NONE and event.ack == nonce + 1:
                    if event.status:
                        name = errno.errorcode.get(event.status, str(event.status))
                        raise KernelUnavailable(f"the kernel refused PROC_CN_MCAST_LISTEN: {name}")
                    return early
    finally:
        sock.settimeout(None)
    raise KernelUnavailable(
        f"no answer to PROC_CN_MCAST_LISTEN within {_ACK_TIMEOUT_S:g} s: not in the initial "
        "PID/user namespace (the kernel ignores such listeners) or no CONFIG_PROC_EVENTS"
    )
