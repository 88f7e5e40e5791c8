"""The netlink process connector's wire format, decoded with ``struct``; no I/O.

Theory of operation. The kernel (``drivers/connector/cn_proc.c``) sends each
process event as its own datagram: a 16-byte ``nlmsghdr``, a 20-byte
``cn_msg`` (idx, val, seq, ack, len, flags) and a 40-byte ``proc_event``
(what, cpu, timestamp_ns, then a 24-byte union), 76 bytes in all. This module
turns such bytes into :class:`ProcEvent` tuples, tells a process's events
from a thread's, splits an exit's wait status and finds the events the kernel
dropped from the per-CPU sequence numbers. :mod:`procmond.collect.kernel`
owns the socket, the reader thread and the ``/proc`` reads.

Facts from the kernel source this relies on (``cn_proc.c``, Linux 6.x):

* ``timestamp_ns`` is ``ktime_get_ns()``: CLOCK_MONOTONIC, not BOOTTIME (it
  stops while the machine is suspended).
* ``cn_msg.seq`` comes from a per-CPU counter incremented by every message
  the connector sends (acks included), under a lock that also fixes
  ``proc_event.cpu``. A listener without a filter receives every one of them,
  so a jump in one CPU's sequence is exactly the number of messages this
  socket lost: to a full receive buffer (ENOBUFS) or to an allocation
  failure in the kernel (which no ENOBUFS reports).
* A fork reports the new task's pid and tgid: a thread when they differ.
  An exit is sent for every task (threads too). An exec is reported after
  ``de_thread()``, so its pid is always the tgid; we still check.
* An exit's ``exit_code`` is the task's wait status as ``waitpid()`` would
  return it (``(code & 0xff) << 8`` after ``exit(code)``; the signal number,
  ``| 0x80`` with a core dump, after a fatal signal). Its ``exit_signal`` is
  NOT the signal that killed it: it is the signal the parent is sent on the
  child's death (SIGCHLD, 0 for a clone without one, -1 for a thread). The
  parent fields of an exit are 0 when the task was no longer alive enough
  to name its parent.
"""

from __future__ import annotations

import contextlib
import errno
import struct
import threading
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from procmond.collect.redact import redact_cmdline
from procmond.collect.text import bounded_cmdline, decode_comm

__all__ = [
    "CN_IDX_PROC",
    "CN_VAL_PROC",
    "NETLINK_CONNECTOR",
    "PROC_CN_MCAST_IGNORE",
    "PROC_CN_MCAST_LISTEN",
    "PROC_EVENT_EXEC",
    "PROC_EVENT_EXIT",
    "PROC_EVENT_FORK",
    "PROC_EVENT_NONE",
    "ExecReads",
    "KernelRecord",
    "MalformedDatagramError",
    "ProcEvent",
    "ReaderState",
    "SeqTracker",
    "control_message",
    "decode_datagram",
    "is_process_event",
    "make_record",
    "parse_real_uid",
    "parse_stat",
    "refusal_reason",
    "split_cmdline",
    "split_exit_status",
]

#: <linux/netlink.h>: the connector's netlink protocol number.
NETLINK_CONNECTOR: Final = 11
#: <linux/connector.h>: the process connector's id (also its multicast group).
CN_IDX_PROC: Final = 1
CN_VAL_PROC: Final = 1
#: <linux/cn_proc.h>: the two operations a listener sends.
PROC_CN_MCAST_LISTEN: Final = 1
PROC_CN_MCAST_IGNORE: Final = 2
#: <linux/cn_proc.h> ``proc_event.what``; the others (uid, gid, sid, ptrace,
#: comm, coredump) are received, sequence-checked and dropped.
PROC_EVENT_NONE: Final = 0x00000000  # an ack of a LISTEN/IGNORE
PROC_EVENT_FORK: Final = 0x00000001
PROC_EVENT_EXEC: Final = 0x00000002
PROC_EVENT_EXIT: Final = 0x80000000

_NLMSG_DONE: Final = 3
# nlmsghdr (len, type, flags, seq, pid) and cn_msg (idx, val, seq, ack, len, flags).
_HEADERS: Final = struct.Struct("=IHHIIIIIIHH")
# proc_event: what, cpu, timestamp_ns, then the union read as six u32.
_EVENT: Final = struct.Struct("=IIQIIIIII")
_HEADER_SIZE: Final = 16 + 20
_MESSAGE_SIZE: Final = _HEADER_SIZE + _EVENT.size  # 76
_SEQ_MODULO: Final = 1 << 32
# A per-CPU sequence that moves back, or forward by more than this, was
# reset (a CPU came back online), not a loss of two billion messages.
_SEQ_MAX_GAP: Final = 1 << 31


class MalformedDatagramError(ValueError):
    """A datagram that is not a complete process-connector message (a kernel or socket bug)."""


class ProcEvent(NamedTuple):
    """One decoded ``proc_event`` (any kind), with the fields we use, as the kernel gave them."""

    what: int
    cpu: int
    seq: int
    ack: int
    timestamp_ns: int
    #: fork: the child's tgid; exec, exit and the others: the process's tgid.
    tgid: int
    #: fork: the child's pid (thread id); the others: the task's pid.
    pid: int
    #: fork: the parent's tgid; exit: the parent's tgid, 0 when unknown; else 0.
    parent_tgid: int
    #: exit: the wait status (task->exit_code); ack: the error number; else 0.
    status: int


def decode_datagram(data: bytes) -> list[ProcEvent]:
    """Every ``proc_event`` in ``data`` (one per datagram in practice).

    Raises :class:`MalformedDatagramError` when a message is cut short or not the
    process connector's (nothing of a bad datagram is returned).
    """
    events: list[ProcEvent] = []
    offset = 0
    end = len(data)
    while offset < end:
        if end - offset < _MESSAGE_SIZE:
            raise MalformedDatagramError(f"{end - offset} bytes at {offset}: shorter than an event")
        nl_len, nl_type, _, _, _, idx, val, seq, ack, cn_len, _ = _HEADERS.unpack_from(data, offset)
        if nl_len < _MESSAGE_SIZE or offset + nl_len > end or cn_len < _EVENT.size:
            raise MalformedDatagramError(f"message at {offset}: length {nl_len}/{cn_len} of {end}")
        if nl_type != _NLMSG_DONE or idx != CN_IDX_PROC or val != CN_VAL_PROC:
            raise MalformedDatagramError(f"message at {offset}: type {nl_type}, id {idx}.{val}")
        what, cpu, ts, a, b, c, d, _, f = _EVENT.unpack_from(data, offset + _HEADER_SIZE)
        if what == PROC_EVENT_FORK:  # parent pid, parent tgid, child pid, child tgid
            events.append(ProcEvent(what, cpu, seq, ack, ts, d, c, b, 0))
        elif what == PROC_EVENT_EXIT:  # pid, tgid, exit_code, exit_signal, ppid, ptgid
            events.append(ProcEvent(what, cpu, seq, ack, ts, b, a, f, c))
        elif what == PROC_EVENT_NONE:  # ack: err
            events.append(ProcEvent(what, cpu, seq, ack, ts, 0, 0, 0, a))
        else:  # exec and the rest start with pid, tgid
            events.append(ProcEvent(what, cpu, seq, ack, ts, b, a, 0, 0))
        offset += (nl_len + 3) & ~3  # NLMSG_ALIGN
    return events


def is_process_event(event: ProcEvent) -> bool:
    """A fork, exec or exit of a thread-group leader: a process, not a thread, not another kind."""
    return event.what in _PROCESS_KINDS and event.pid == event.tgid


_PROCESS_KINDS: Final = frozenset({PROC_EVENT_FORK, PROC_EVENT_EXEC, PROC_EVENT_EXIT})


def split_exit_status(status: int) -> tuple[int | None, int]:
    """(exit code, terminating signal) of a wait status, as ``os.WEXITSTATUS``/``WTERMSIG``.

    Exited normally: ``(code, 0)``. Killed by a signal: ``(None, signal)``, a
    process that never called exit has no code (the core-dump bit 0x80 is
    dropped).
    """
    signal = status & 0x7F
    if signal == 0:
        return (status >> 8) & 0xFF, 0
    return None, signal


class SeqTracker:
    """Counts the messages missing from each CPU's ``cn_msg.seq`` run (see the module docstring)."""

    def __init__(self) -> None:
        self._last: dict[int, int] = {}

    def missing(self, cpu: int, seq: int) -> int:
        """How many messages of ``cpu`` were lost just before this one (0 for the first seen)."""
        last = self._last.get(cpu)
        self._last[cpu] = seq
        if last is None:
            return 0
        gap = (seq - last - 1) % _SEQ_MODULO
        return gap if gap < _SEQ_MAX_GAP else 0


def control_message(op: int, nonce: int) -> bytes:
    """A LISTEN or IGNORE request; the kernel's ack carries ``ack == nonce + 1``."""
    header = struct.pack("=IHHII", _HEADER_SIZE + 4, _NLMSG_DONE, 0, 0, 0)
    return header + struct.pack("=IIIIHHI", CN_IDX_PROC, CN_VAL_PROC, 0, nonce, 4, 0, op)


def parse_stat(data: bytes) -> tuple[bytes, int, int]:
    """(comm, ppid, start ticks) of a ``/proc/<pid>/stat`` line (comm may hold ``)``)."""
    close = data.rindex(b")")
    rest = data[close + 2 :].split(None, 20)
    return data[data.index(b"(") + 1 : close], int(rest[1]), int(rest[19])


def parse_real_uid(data: bytes) -> int | None:
    """The real uid of a ``/proc/<pid>/status`` text (its ``Uid:`` line's first field)."""
    at = data.find(b"\nUid:")
    return int(data[at + 5 :].split(None, 1)[0]) if at >= 0 else None


def split_cmdline(raw: bytes) -> list[str]:
    """``/proc/<pid>/cmdline`` as psutil splits it: on NUL, or on spaces when a process
    rewrote its title without NULs; bytes that are not UTF-8 survive as surrogates."""
    data = raw.decode("utf-8", "surrogateescape")
    if not data:
        return []
    sep = "\x00" if data.endswith("\x00") else " "
    if data.endswith(sep):
        data = data[:-1]
    args = data.split(sep)
    if sep == "\x00" and len(args) == 1 and " " in data:
        args = data.split(" ")
    return args


#: What the reader read for an exec: cmdline, exe, stat, status (None: could not).
ExecReads = tuple[bytes | None, str | None, bytes | None, bytes | None]


@dataclass(frozen=True, slots=True)
class KernelRecord:
    """One fork, exec or exit of a process, decoded and resolved (see the module docstring)."""

    kind: Literal["fork", "exec", "exit"]
    pid: int
    ppid: int | None
    start_ticks: int | None
    event_time: float
    comm: str | None
    exe: str | None
    cmdline: tuple[str, ...] | None
    uid: int | None
    exit_code: int | None
    exit_signal: int | None
    partial: bool


def make_record(event: ProcEvent, reads: object, offset: float) -> KernelRecord:
    """The record of a process event and what was read for it (``offset``: wall - monotonic)."""
    when = event.timestamp_ns / 1e9 + offset
    if event.what == PROC_EVENT_EXEC:
        assert isinstance(reads, tuple)
        return _exec_record(event.tgid, when, reads)
    if event.what == PROC_EVENT_FORK:
        start_ticks = None
        if isinstance(reads, bytes):
            with contextlib.suppress(ValueError, IndexError):
                start_ticks = parse_stat(reads)[2]
        return KernelRecord(
            kind="fork",
            pid=event.tgid,
            ppid=event.parent_tgid,
            start_ticks=start_ticks,
            event_time=when,
            comm=None,
            exe=None,
            cmdline=None,
            uid=None,
            exit_code=None,
            exit_signal=None,
            partial=start_ticks is None,
        )
    code, signal = split_exit_status(event.status)
    return KernelRecord(
        kind="exit",
        pid=event.tgid,
        ppid=event.parent_tgid or None,
        start_ticks=None,
        event_time=when,
        comm=None,
        exe=None,
        cmdline=None,
        uid=None,
        exit_code=code,
        exit_signal=signal,
        partial=False,
    )


def _exec_record(pid: int, when: float, reads: ExecReads) -> KernelRecord:
    """An exec's record: what could be read is filled in, ``partial`` when anything could not."""
    raw_cmdline, exe, stat, status = reads
    comm: str | None = None
    ppid = start_ticks = uid = None
    if stat is not None:
        try:
            raw_comm, ppid, start_ticks = parse_stat(stat)
            comm = decode_comm(raw_comm)
        except (ValueError, IndexError):
            stat = None
    if status is not None:
        try:
            uid = parse_real_uid(status)
        except ValueError:
            uid = None
    cmdline = None
    if raw_cmdline is not None:
        cmdline = bounded_cmdline(redact_cmdline(split_cmdline(raw_cmdline)))
    partial = cmdline is None or exe is None or stat is None or uid is None
    return KernelRecord(
        "exec", pid, ppid, start_ticks, when, comm, exe, cmdline, uid, None, None, partial
    )


def refusal_reason(action: str, exc: OSError) -> str:
    """One line: what was refused, the errno name and what it usually means."""
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    hint = {
        errno.EPERM: "needs root or CAP_NET_ADMIN",
        errno.EACCES: "needs root or CAP_NET_ADMIN",
        errno.EPROTONOSUPPORT: "the kernel has no netlink connector (CONFIG_CONNECTOR)",
        errno.EAFNOSUPPORT: "no netlink sockets here",
        errno.ECONNREFUSED: "not in the initial network namespace, or no connector",
    }.get(exc.errno or 0, exc.strerror or "unexpected")
    return f"{action} failed: {name} ({hint})"


class ReaderState:
    """``running`` and ``lost_since_last`` of a kernel source (the thread and the process
    versions), from its reading thread and its ``lost`` total."""

    _thread: threading.Thread | None
    _lock: threading.Lock
    _lost_reported: int

    @property
    def lost(self) -> int:
        """Events the kernel dropped so far (each source counts its own way)."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """Whether the reading thread is alive (it ends on stop() or a failure)."""
        return self._thread is not None and self._thread.is_alive()

    def lost_since_last(self) -> int:
        """Events lost since the previous call (0: none; anything else: resync by a cycle)."""
        with self._lock:
            lost = self.lost
            delta, self._lost_reported = lost - self._lost_reported, lost
        return delta
