"""The kernel's view and the cycle's view of processes, merged in one table.

The collector keeps one table of live processes, keyed ``(pid, start ticks)``
(:mod:`procmond.collect.collector`). Both sources update that same table, one
at a time (the daemon runs both on the collection thread), and an event is
emitted only by whoever changes the table, so whatever the interleaving:

* a process is reported started once: by the kernel's fork (or, if the fork
  was lost, its first exec) or by the first cycle that sees it, whichever
  comes first; the other finds it tracked and says nothing;
* it is reported stopped once, and only after a start: by the kernel's exit
  or by the first cycle that no longer finds it; an exit of a process never
  tracked (a thread, or one whose fork was lost and that died unseen) is
  dropped, since there is no start to pair it with;
* every exec the kernel reports becomes an ``exec`` event (protocol
  section 9), with the details the reader thread read at once, or
  ``partial`` when the process was already gone;
* records arrive late relative to the cycles (they wait behind a running
  cycle on the collection thread): a cycle may already have seen a process
  start and stop before its fork record is folded in. A process reported
  stopped is *retired*, and late records about it change nothing (the
  property test in ``tests/test_kernel_merge.py`` found this one).

A fork copies its parent: the child's name, exe, command line and user are
the parent's until it execs, so a fork event carries the parent's details
(or is ``partial`` when the parent is unknown too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from procmond.collect.details import UserNames, long_name
from procmond.collect.kernel import KernelRecord
from procmond.collect.process_event import EventType, ProcessEvent
from procmond.collect.scan import CLK_TCK
from procmond.collect.state import Tracked

__all__ = ["UNKNOWN_OWNER", "KernelBatch", "KernelMerge", "Key"]

Key = tuple[int, int]
#: Stopped processes remembered so that their late records are ignored. Records
#: are late by at most a cycle or two; at 1,000 processes a second this covers a
#: minute, in ~6 MB.
RETIRED_KEYS: Final = 65_536
#: Owner of a process the kernel reported and no cycle has read yet: the next
#: cycle adopts what it reads instead of reporting a change of user.
UNKNOWN_OWNER: Final = -1


@dataclass
class KernelBatch:
    """What one batch of kernel records did to the table."""

    events: list[ProcessEvent] = field(default_factory=list)
    partial: int = 0


class KernelMerge:
    """Folds kernel records into the collector's table of tracked processes."""

    def __init__(self, tracked: dict[Key, Tracked], users: UserNames, boot_time: float) -> None:
        self._tracked = tracked
        self._users = users
        self._boot_time = boot_time
        self._by_pid: dict[int, Key] = {}
        self._retired: dict[Key, None] = {}

    def retire(self, key: Key) -> None:
        """``key`` was reported stopped: later records about it are stale."""
        self._retired[key] = None
        if len(self._retired) > RETIRED_KEYS:
            del self._retired[next(iter(self._retired))]

    def reindex(self) -> None:
        """After a cycle changed the table: which key each pid has now."""
        self._by_pid = {key[0]: key for key in self._tracked}

    def _key(self, record: KernelRecord) -> Key:
        if record.start_ticks is not None:
            return record.pid, record.start_ticks
        known = self._by_pid.get(record.pid)
        if known is not None and known in self._tracked:
            return known
        # Gone before /proc could be read: the kernel's timestamp stands in for the
        # start time (same clock, without suspend; at most a tick apart).
        return record.pid, int((record.event_time - self._boot_time) * CLK_TCK)

    def apply(self, records: Sequence[KernelRecord], now: float) -> KernelBatch:
        """Apply ``records`` in order; the events they make, and how many were partial."""
        batch = KernelBatch()
        for record in records:
            if record.kind == "fork":
                self._fork(record, now, batch)
            elif record.kind == "exec":
                self._exec(record, now, batch)
            else:
                self._exit(record, now, batch)
        return batch

    def _fork(self, record: KernelRecord, now: float, batch: KernelBatch) -> None:
        key = self._key(record)
        if key in self._tracked or key in self._retired:
            return  # a cycle saw it first (and maybe saw it go)
        parent_key = self._by_pid.get(record.ppid) if record.ppid is not None else None
        parent = self._tracked.get(parent_key) if parent_key is not None else None
        tracked = self._new(key, record)
        if parent is not None:
            tracked.comm, tracked.name = parent.comm, parent.name
            tracked.exe, tracked.cmdline = parent.exe, parent.cmdline
            tracked.username, tracked.owner = parent.username, parent.owner
        partial = parent is None or record.start_ticks is None
        self._emit("start", tracked, record, now, batch, partial=partial)

    def _exec(self, record: KernelRecord, now: float, batch: KernelBatch) -> None:
        key = self._key(record)
        if key in self._retired:
            return  # a cycle already reported it stopped
        tracked = self._tracked.get(key)
        if tracked is None:  # its fork was lost or came before we listened: start it here
            tracked = self._new(key, record)
            self._emit("start", tracked, record, now, batch, partial=record.partial)
        # The new program: what was read replaces the old program's details, and what
        # could not be read (the process was gone) is unknown now, not the parent's.
        comm = (record.comm or "").encode("utf-8", "surrogateescape")
        tracked.comm = comm
        tracked.name = long_name(comm, list(record.cmdline or ())) if record.comm else ""
        tracked.exe, tracked.cmdline = record.exe, record.cmdline or ()
        tracked.username = self._users.lookup(record.uid) if record.uid is not None else None
        if record.ppid is not None:
            tracked.ppid = record.ppid
        self._emit("exec", tracked, record, now, batch, partial=record.partial, read=record.cmdline)

    def _exit(self, record: KernelRecord, now: float, batch: KernelBatch) -> None:
        key = self._by_pid.get(record.pid)
        if key is None or key not in self._tracked:
            return  # never started (a lost fork), or a cycle already reported it stopped
        tracked = self._tracked.pop(key)
        del self._by_pid[record.pid]
        self.retire(key)
        self._emit("stop", tracked, record, now, batch, partial=False)

    def _new(self, key: Key, record: KernelRecord) -> Tracked:
        start_time = key[1] / CLK_TCK + self._boot_time
        tracked = Tracked(
            key[0],
            start_time,
            record.ppid if record.ppid is not None else 0,
            b"",
            "running",
            UNKNOWN_OWNER,
            0.0,
            0,
            0.0,
        )
        self._tracked[key] = tracked
        self._by_pid[key[0]] = key
        return tracked

    def _emit(
        self,
        kind: EventType,
        tracked: Tracked,
        record: KernelRecord,
        now: float,
        batch: KernelBatch,
        *,
        partial: bool,
        read: tuple[str, ...] | None = None,
    ) -> None:
        """``read``: for an exec, the command line as read (None: unread; the other
        details are then what the exec could read, each null when it could not)."""
        known = not partial or kind in ("stop", "exec")
        batch.partial += partial
        batch.events.append(
            ProcessEvent(
                event_type=kind,
                pid=tracked.pid,
                ppid=tracked.ppid,
                name=(tracked.name or None) if known else None,
                exe=tracked.exe if known else None,
                cmdline=(read if kind == "exec" else tracked.cmdline) if known else None,
                username=tracked.username if known else None,
                start_time=tracked.start_time,
                status="dead" if kind == "stop" else tracked.status,
                observed_at=now,
                source="kernel",
                event_time=record.event_time,
                partial=partial,
                exit_code=_exit_code(record) if kind == "stop" else None,
                exit_signal=(record.exit_signal or 0) if kind == "stop" else None,
            )
        )


def _exit_code(record: KernelRecord) -> int:
    """Protocol section 9 wants integers: a process killed by a signal gets 128 + the
    signal, as a shell reports it (``exit_signal`` tells the two apart)."""
    if record.exit_code is not None:
        return record.exit_code
    return 128 + (record.exit_signal or 0)
