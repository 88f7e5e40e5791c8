"""The kernel event source: decoding of synthetic datagrams, exit status splitting,
redaction, loss counting, refusal reasons, and a real exec storm (root only)."""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from procmond.collect.kernel import KernelRecord, KernelSource, KernelUnavailable
from procmond.collect.kernel_decode import (
    PROC_EVENT_EXEC,
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    PROC_EVENT_NONE,
    MalformedDatagramError,
    ProcEvent,
    SeqTracker,
    decode_datagram,
    is_process_event,
    make_record,
    refusal_reason,
    split_cmdline,
    split_exit_status,
)

PROC_EVENT_UID = 0x4
TS = 5_000_000_000  # 5 s of CLOCK_MONOTONIC


def datagram(what: int, *union: int, cpu: int = 0, seq: int = 7, ack: int = 0) -> bytes:
    """A process-connector message as the kernel sends it: nlmsghdr, cn_msg, proc_event."""
    body = struct.pack("=IIQ", what, cpu, TS) + struct.pack("=6I", *union, *[0] * (6 - len(union)))
    cn = struct.pack("=IIIIHH", 1, 1, seq, ack, len(body), 0) + body
    return struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn


def test_fork_decodes_child_and_parent_tgid() -> None:
    """A fork names the child (tgid, pid) and the parent's tgid."""
    [event] = decode_datagram(datagram(PROC_EVENT_FORK, 100, 100, 200, 200, cpu=1, seq=9))
    assert event == ProcEvent(PROC_EVENT_FORK, 1, 9, 0, TS, 200, 200, 100, 0)
    assert is_process_event(event)


def test_exec_decodes_pid_and_tgid() -> None:
    """An exec names the process; it is a process event."""
    [event] = decode_datagram(datagram(PROC_EVENT_EXEC, 300, 300))
    assert (event.what, event.tgid, event.pid) == (PROC_EVENT_EXEC, 300, 300)
    assert is_process_event(event)


def test_exit_decodes_status_and_parent() -> None:
    """An exit carries the wait status and the parent's tgid (not exit_signal)."""
    status = 3 << 8
    [event] = decode_datagram(datagram(PROC_EVENT_EXIT, 400, 400, status, 17, 50, 51))
    assert (event.tgid, event.pid, event.parent_tgid, event.status) == (400, 400, 51, status)


def test_thread_fork_and_exit_are_not_process_events() -> None:
    """A new thread (child pid != tgid) and a thread's exit are filtered out."""
    [fork] = decode_datagram(datagram(PROC_EVENT_FORK, 100, 100, 201, 200))
    [exit_] = decode_datagram(datagram(PROC_EVENT_EXIT, 201, 200, 0, 0xFFFFFFFF, 100, 100))
    assert not is_process_event(fork)
    assert not is_process_event(exit_)


@pytest.mark.parametrize("what", [PROC_EVENT_UID, PROC_EVENT_NONE, 0x1234])
def test_other_kinds_decode_but_are_not_process_events(what: int) -> None:
    """uid, ack and unknown kinds decode (their seq counts) but are dropped."""
    [event] = decode_datagram(datagram(what, 10, 10, seq=3))
    assert event.seq == 3
    assert not is_process_event(event)


@pytest.mark.parametrize("cut", [0, 20, 75])
def test_truncated_datagram_is_malformed(cut: int) -> None:
    """A datagram shorter than one event raises MalformedDatagramError, returns nothing."""
    data = datagram(PROC_EVENT_EXEC, 1, 1)[:cut] if cut else b"\x00" * 10
    with pytest.raises(MalformedDatagramError):
        decode_datagram(data)


def test_foreign_message_is_malformed() -> None:
    """A message of another connector id is refused."""
    data = bytearray(datagram(PROC_EVENT_EXEC, 1, 1))
    data[16:20] = struct.pack("=I", 9)
    with pytest.raises(MalformedDatagramError):
        decode_datagram(bytes(data))


def test_exit_status_split_matches_waitpid() -> None:
    """exit(3) gives (3, 0); SIGKILL gives (None, 9): the same as os.WEXITSTATUS/WTERMSIG."""
    for command, expected in (("exit 3", (3, 0)), ("kill -KILL $$", (None, signal.SIGKILL))):
        pid = os.spawnlp(os.P_NOWAIT, "sh", "sh", "-c", command)
        _, status = os.waitpid(pid, 0)
        assert split_exit_status(status) == expected


def test_exit_status_core_dump_bit_is_dropped() -> None:
    """A core-dumped SIGSEGV (0x80 | 11) is signal 11, no exit code."""
    assert split_exit_status(0x80 | signal.SIGSEGV) == (None, signal.SIGSEGV)


def test_exit_record_uses_wait_status_not_exit_signal() -> None:
    """The record's exit_signal is the terminating signal, not the kernel's SIGCHLD field."""
    event = ProcEvent(PROC_EVENT_EXIT, 0, 0, 0, TS, 9, 9, 0, signal.SIGTERM)
    record = make_record(event, None, offset=1000.0)
    assert (record.exit_code, record.exit_signal, record.ppid) == (None, signal.SIGTERM, None)
    assert record.event_time == pytest.approx(1005.0)


def test_exec_cmdline_is_redacted_and_complete() -> None:
    """An exec's command line is split on NUL and redacted; a full read is not partial."""
    stat = b"42 (mysql) S 7 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0"
    status = b"Name:\tmysql\nUid:\t1000\t1000\t1000\t1000\n"
    cmdline = b"mysql\x00--password\x00hunter2\x00-h\x00db\x00"
    event = ProcEvent(PROC_EVENT_EXEC, 0, 0, 0, TS, 42, 42, 0, 0)
    record = make_record(event, (cmdline, "/usr/bin/mysql", stat, status), offset=0.0)
    assert record == KernelRecord(
        kind="exec",
        pid=42,
        ppid=7,
        start_ticks=12345,
        event_time=5.0,
        comm="mysql",
        exe="/usr/bin/mysql",
        cmdline=("mysql", "--password", "[REDACTED]", "-h", "db"),
        uid=1000,
        exit_code=None,
        exit_signal=None,
        partial=False,
    )


def test_exec_of_a_vanished_process_is_partial() -> None:
    """Nothing readable: the record keeps pid and time, the rest None, partial=True."""
    event = ProcEvent(PROC_EVENT_EXEC, 0, 0, 0, TS, 42, 42, 0, 0)
    record = make_record(event, (None, None, None, None), offset=0.0)
    assert record.partial
    assert (record.pid, record.cmdline, record.comm, record.uid, record.ppid) == (
        42,
        None,
        None,
        None,
        None,
    )


def test_fork_without_stat_is_partial() -> None:
    """A fork whose child is already gone has no start ticks and is partial."""
    event = ProcEvent(PROC_EVENT_FORK, 0, 0, 0, TS, 43, 43, 42, 0)
    record = make_record(event, None, offset=0.0)
    assert (record.ppid, record.start_ticks, record.partial) == (42, None, True)


def test_cmdline_split_follows_psutil() -> None:
    """NUL-separated, or space-separated after setproctitle; empty is no arguments."""
    assert split_cmdline(b"a\x00b c\x00") == ["a", "b c"]
    assert split_cmdline(b"nginx: worker process\x00") == ["nginx:", "worker", "process"]
    assert split_cmdline(b"") == []


def test_seq_tracker_counts_gaps_per_cpu_and_wraps() -> None:
    """Each CPU's run is checked alone; the u32 wrap is not a loss; a reset is not either."""
    tracker = SeqTracker()
    assert [tracker.missing(0, s) for s in (5, 6, 9)] == [0, 0, 2]
    assert [tracker.missing(1, s) for s in (2**32 - 1, 0, 1)] == [0, 0, 0]
    assert tracker.missing(0, 3) == 0  # moved back: a reset, not 4 billion losses


def test_source_counts_gaps_and_drops_threads_and_malformed() -> None:
    """Fed datagrams directly, the source delivers process records only and counts losses."""
    batches: list[list[KernelRecord]] = []
    source = KernelSource(batches.append)
    pending: list[tuple[ProcEvent, object]] = []
    for data in (
        datagram(PROC_EVENT_EXIT, 10, 10, 0, 17, 1, 1, seq=1),
        datagram(PROC_EVENT_EXIT, 11, 10, 0, 0xFFFFFFFF, 1, 1, seq=2),  # a thread
        datagram(PROC_EVENT_UID, 10, 10, seq=3),  # another kind
        datagram(PROC_EVENT_EXIT, 12, 12, 0, 17, 1, 1, seq=7),  # 4, 5, 6 lost
        b"\x01\x02",
    ):
        source._take(data, pending)  # the reader's per-datagram step, without a socket
    source._hand_over(pending)
    assert [r.pid for batch in batches for r in batch] == [10, 12]
    assert (source.received, source.seq_gaps, source.malformed) == (2, 3, 1)
    assert source.lost_since_last() == 3
    assert source.lost_since_last() == 0


def test_socket_refused_is_kernel_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket the system refuses becomes KernelUnavailable naming the errno and the cure."""

    def refuse(*_args: object, **_kwargs: object) -> socket.socket:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(socket, "socket", refuse)
    with pytest.raises(KernelUnavailable) as info:
        KernelSource(lambda batch: None).start()
    assert "EPERM" in info.value.reason
    assert "CAP_NET_ADMIN" in info.value.reason
    assert "\n" not in info.value.reason


def test_refusal_reason_names_namespace_for_econnrefused() -> None:
    """ECONNREFUSED from the connector points at the network namespace."""
    reason = refusal_reason("sending LISTEN", ConnectionRefusedError(errno.ECONNREFUSED, "x"))
    assert "ECONNREFUSED" in reason
    assert "network namespace" in reason


def test_real_exec_storm_is_seen_whole() -> None:
    """Root only: 200 /bin/true from a separate shell are all seen, >= 90 % resolved, and
    every child's fork and exit arrive; the source stops within its bound."""
    if os.geteuid() != 0:
        pytest.skip("the netlink process connector needs root here")
    records: list[KernelRecord] = []
    shell: list[int] = []
    shell_exited = threading.Event()

    def deliver(batch: list[KernelRecord]) -> None:
        records.extend(batch)
        if shell and any(r.kind == "exit" and r.pid == shell[0] for r in batch):
            shell_exited.set()

    source = KernelSource(deliver)
    try:
        source.start()
    except KernelUnavailable as exc:
        pytest.skip(f"kernel source unavailable: {exc.reason}")
    marker = f"kstorm-{os.getpid()}-{time.monotonic_ns()}"
    script = f'i=0; while [ "$i" -lt 200 ]; do i=$((i+1)); /bin/true {marker}-$i; done'
    try:
        proc = subprocess.Popen(["sh", "-c", script])
        shell.append(proc.pid)
        assert proc.wait(timeout=60) == 0
        assert shell_exited.wait(timeout=20), "the storm shell's exit record never arrived"
    finally:
        source.stop()
    assert not source.running
    kids = {r.pid for r in records if r.kind == "fork" and r.ppid == proc.pid}
    execs = [r for r in records if r.kind == "exec" and r.pid in kids]
    exits = {r.pid for r in records if r.kind == "exit" and r.pid in kids}
    resolved = [r for r in execs if r.cmdline and r.cmdline[-1].startswith(marker)]
    assert len(kids) == 200
    assert len(execs) == 200
    assert exits == kids
    assert len(resolved) >= 180, f"only {len(resolved)} of 200 command lines resolved"
    codes = {(r.exit_code, r.exit_signal) for r in records if r.kind == "exit" and r.pid in kids}
    assert codes == {(0, 0)}
    assert all(abs(r.event_time - time.time()) < 60 for r in execs)
    assert source.lost == 0
