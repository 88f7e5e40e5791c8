"""Process collection: turns successive views of the process table into events.

Only this module and the two it reads the process table with import psutil
or read /proc: everything the daemon knows about processes passes through
:class:`ProcessCollector`. Reading the cheap fields is
:mod:`procmond.collect.scan`, the expensive ones
:mod:`procmond.collect.details`, the state kept between and during cycles
:mod:`procmond.collect.state`; this module turns what they read into events.

Theory of operation. A process is identified by ``(pid, create_time)``, so a
recycled pid is a stop plus a start, never a modify. Each ``collect()`` is one
pass over the process table:

* Cheap fields, every process, every cycle: pid, ppid, name (the kernel's
  ``comm``), create_time, status, the owner uid, and the cpu time and resident
  set size behind ``cpu_percent`` / ``memory_rss``. On Linux all of them come
  from one read of ``/proc/[pid]/stat`` plus an ``fstat`` of the same open file
  (its owner is the process's effective uid): ~8 us per process in all,
  because psutil's per-field reads cost 15 to 30 us apiece (LIBRARY-NOTES)
  and the steady-state budget is half of what ``ps -eo`` spends (~32 us).
  Where there is no procfs, psutil reads the same fields (slower, portable).
* Expensive fields, only for a process seen for the first time or whose name
  changed (an exec or a rename): cmdline (redacted here, before it is stored
  anywhere), exe, username (the real uid from ``/proc/[pid]/status``, as
  psutil reports it, through our own uid -> name cache; re-read when the owner
  uid changes), and optionally the SHA-256 of the executable, cached by
  (path, device, inode, size, mtime) and bounded by a per-cycle time budget.
  These are read through psutil.

Events: the first call is the baseline (every process a ``start`` with
``baseline=True``). After that, a new key is a ``start``, a vanished key a
``stop`` carrying the last known fields, and a tracked key whose ppid, name,
username, exe (or cmdline, re-read with them) changed, or whose status moved
into or out of zombie/stopped, a ``modify`` naming the changed fields. A plain
running <-> sleeping flip is noise and produces nothing (the new status is
still remembered, so a later event carries it).

``cpu_percent`` is computed from the same stat read psutil would use: cpu time
since the previous cycle over wall time since then (100.0 = one full core);
for a process seen for the first time it is the lifetime average, as ``ps``
shows it. Keeping psutil ``Process`` objects alive only to call
``cpu_percent()`` would cost ~21 us per process per cycle for the same number.

With ``max_processes`` the scan keeps the lowest pids; a tracked process
whose pid falls beyond the limit is not observed, so it gets neither a stop
nor, when the limit is raised again, a second start.

Known limits: an exec that keeps the name (python execs python) is seen only
through its other cheap fields; a cmdline rewritten in place (setproctitle)
without a rename is not re-read; a change of the real uid alone (effective uid
unchanged) is not seen; the uid -> name cache lives as long as the collector.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Final

import psutil

from procmond.collect.details import (
    MAX_CMDLINE_BYTES,
    ExeHashes,
    UserNames,
    bounded_cmdline,
    decode_comm,
    long_name,
    read_args_and_exe,
)
from procmond.collect.kernel import KernelRecord
from procmond.collect.kernel_merge import UNKNOWN_OWNER, KernelBatch, KernelMerge
from procmond.collect.process_event import EventType, ProcessEvent  # what collect() produces
from procmond.collect.redact import redact_cmdline
from procmond.collect.scan import (
    PROC,
    current_key,
    list_pids,
    real_uid,
    scan_procfs,
    scan_psutil,
)
from procmond.collect.state import CollectorSettings, Cycle, CycleResult, Tracked

__all__ = [
    "MAX_CMDLINE_BYTES",
    "CollectorSettings",
    "CycleResult",
    "ProcessCollector",
    "bounded_cmdline",
]

# Statuses worth an event when entered or left; everything else is "alive".
_NOTABLE_STATUS: Final[dict[str, str]] = {
    psutil.STATUS_ZOMBIE: "zombie",
    psutil.STATUS_STOPPED: "stopped",
    psutil.STATUS_TRACING_STOP: "stopped",
}
#: kthreadd: the parent of every kernel thread on Linux.
_KTHREADD_PID: Final = 2
# The settings are frozen, so one default instance serves every collector (it is
# the same single instance a default written in the signature would be).
_DEFAULT_SETTINGS: Final = CollectorSettings()


class ProcessCollector:
    """Diffs the process table between calls to ``collect()``; see the module docstring."""

    def __init__(self, settings: CollectorSettings = _DEFAULT_SETTINGS) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        # Key: (pid, start ticks since boot), exact integers, so a key never
        # drifts with the wall clock (the boot time psutil derives can move
        # by a second when the clock is stepped).
        self._tracked: dict[tuple[int, int], Tracked] = {}
        self._baseline_done = False
        self._users = UserNames()
        self._hashes = ExeHashes()
        self._procfs = os.path.exists(f"{PROC}/self/stat")
        self._boot_time = psutil.boot_time()
        self._merge = KernelMerge(self._tracked, self._users, self._boot_time)

    def update_settings(self, settings: CollectorSettings) -> None:
        """Replace the settings; the next ``collect()`` uses them."""
        with self._lock:
            self._settings = settings

    def collect(self) -> CycleResult:
        """Run one collection pass and return its events; never raises for one process."""
        started = time.perf_counter()
        with self._lock:
            settings = self._settings
        mono = time.monotonic()
        cycle = Cycle(
            settings, not self._baseline_done, time.time(), mono, mono + settings.hash_budget_secs
        )
        pids = list_pids(self._procfs)
        truncated = 0 < settings.max_processes < len(pids)
        if truncated:
            pids = pids[: settings.max_processes]
        if self._procfs:
            scan_procfs(pids, self._boot_time, cycle, self._observe)
        else:
            scan_psutil(pids, self._boot_time, cycle, self._observe)
        last_pid = pids[-1] if truncated and pids else None
        for key in [k for k in self._tracked if k not in cycle.seen]:
            pid = key[0]
            if pid in cycle.kept_pids or (last_pid is not None and pid > last_pid):
                continue  # not observed this cycle: no evidence that it stopped
            cycle.events.append(self._event("stop", self._tracked.pop(key), cycle))
            self._merge.retire(key)
        self._baseline_done = True
        self._merge.reindex()
        return CycleResult(
            events=cycle.events,
            processes=len(cycle.seen),
            errors=cycle.errors,
            duration_ms=(time.perf_counter() - started) * 1000.0,
            baseline=cycle.baseline,
            truncated=truncated,
        )

    def apply_kernel(self, records: Sequence[KernelRecord]) -> KernelBatch:
        """Fold kernel process records into the same table the cycles diff against.

        Call it from the thread that runs :meth:`collect` (never concurrently
        with it): one table, changed by one source at a time, is what keeps
        a process from being reported started or stopped twice.
        """
        return self._merge.apply(records, time.time())

    # -- turning what the scan read into events --------------------------------

    def _observe(
        self,
        key: tuple[int, int],
        start_time: float,
        ppid: int,
        comm: bytes,
        status: str,
        owner: int,
        cpu_secs: float,
        rss: int,
        cycle: Cycle,
    ) -> None:
        """Fold one process's cheap fields into the tracked state; record any event."""
        cycle.seen.add(key)
        known = self._tracked.get(key)
        if known is None:
            self._on_new(key, start_time, ppid, comm, status, owner, cpu_secs, rss, cycle)
            return
        if known.owner == UNKNOWN_OWNER:
            known.owner = owner  # reported by the kernel, read by a cycle for the first time
        known.prev_cpu_secs, known.prev_sampled_at = known.cpu_secs, known.sampled_at
        known.cpu_secs, known.rss, known.sampled_at = cpu_secs, rss, cycle.mono
        old_status, known.status = known.status, status
        if (
            ppid == known.ppid
            and comm == known.comm
            and owner == known.owner
            and (
                status == old_status
                or _NOTABLE_STATUS.get(status) == _NOTABLE_STATUS.get(old_status)
            )
        ):
            return  # the steady state: nothing an operator would want to hear about
        changed: list[str] = []
        if ppid != known.ppid:
            known.ppid = ppid
            changed.append("ppid")
        if owner != known.owner:
            known.owner = owner
            username = self._users.lookup(real_uid(key[0], owner, self._procfs))
            if username != known.username:
                known.username = username
                changed.append("username")
        if _NOTABLE_STATUS.get(status) != _NOTABLE_STATUS.get(old_status):
            changed.append("status")
        if comm != known.comm:
            known.comm = comm
            if _is_kernel_thread(key[0], ppid):
                # kworkers rename themselves after the work item they run, many
                # times a minute; a kernel thread cannot exec, so it is not news.
                known.name = decode_comm(comm)
            else:
                changed.extend(self._reread_after_exec(known, key, cycle))
        if changed:
            known.changed = tuple(changed)
            cycle.events.append(self._event("modify", known, cycle))

    def _on_new(
        self,
        key: tuple[int, int],
        start_time: float,
        ppid: int,
        comm: bytes,
        status: str,
        owner: int,
        cpu_secs: float,
        rss: int,
        cycle: Cycle,
    ) -> None:
        """First sight of a key: read the expensive fields and report a start."""
        tracked = Tracked(key[0], start_time, ppid, comm, status, owner, cpu_secs, rss, cycle.mono)
        try:
            tracked.name, tracked.exe, tracked.cmdline = self._read_expensive(key, comm)
            tracked.username = self._users.lookup(real_uid(key[0], owner, self._procfs))
        except (psutil.Error, OSError):
            # Gone, recycled or denied while we read it: skip it this cycle
            # (a live one is retried as new next cycle), and count it.
            cycle.errors += 1
            cycle.seen.discard(key)
            cycle.kept_pids.add(key[0])
            return
        tracked.exe_sha256 = self._hash_exe(key[0], tracked.exe, cycle)
        self._tracked[key] = tracked
        cycle.events.append(self._event("start", tracked, cycle, baseline=cycle.baseline))

    def _reread_after_exec(self, known: Tracked, key: tuple[int, int], cycle: Cycle) -> list[str]:
        """The name changed (exec or rename): re-read the expensive fields, name what moved."""
        try:
            name, exe, cmdline = self._read_expensive(key, known.comm)
        except (psutil.Error, OSError):
            cycle.errors += 1  # exited or denied meanwhile; keep what we knew
            name, exe, cmdline = decode_comm(known.comm), known.exe, known.cmdline
        changed = ["name"] if name != known.name else []
        if exe != known.exe:
            changed.append("exe")
            known.exe_sha256 = self._hash_exe(key[0], exe, cycle)
        if cmdline != known.cmdline:
            changed.append("cmdline")
        known.name, known.exe, known.cmdline = name, exe, cmdline
        return changed or ["name"]  # comm moved even though the long name did not

    def _event(
        self, kind: EventType, t: Tracked, cycle: Cycle, *, baseline: bool = False
    ) -> ProcessEvent:
        """Build the immutable event from what we track."""
        enhanced = cycle.settings.collect_enhanced_metadata
        return ProcessEvent(
            event_type=kind,
            pid=t.pid,
            ppid=t.ppid,
            name=t.name,
            exe=t.exe,
            cmdline=t.cmdline,
            username=t.username,
            start_time=t.start_time,
            status=t.status,
            observed_at=cycle.now,
            baseline=baseline,
            cpu_percent=t.cpu_percent(cycle.now) if enhanced else None,
            memory_rss=t.rss if enhanced else None,
            exe_sha256=t.exe_sha256 if cycle.settings.compute_executable_hashes else None,
            changed=t.changed if kind == "modify" else (),
        )

    # -- the expensive fields ------------------------------------------------

    def _read_expensive(
        self, key: tuple[int, int], comm: bytes
    ) -> tuple[str, str | None, tuple[str, ...]]:
        """Name (long form), exe and redacted cmdline, through psutil."""
        args, exe = read_args_and_exe(key[0])
        if current_key(key[0], self._procfs, self._boot_time) != key:
            raise psutil.NoSuchProcess(key[0])  # the pid was recycled while we read
        # Redact first: a cut could split a secret from the flag that marks it.
        return long_name(comm, args), exe, bounded_cmdline(redact_cmdline(args))

    def _hash_exe(self, pid: int, exe: str | None, cycle: Cycle) -> str | None:
        """SHA-256 of the running executable, cached, within the cycle's time budget."""
        if not cycle.settings.compute_executable_hashes or exe is None:
            return None
        # /proc/[pid]/exe reaches the binary even when deleted or in another
        # mount namespace; its stat identifies the file actually running.
        link = f"{PROC}/{pid}/exe" if self._procfs else exe
        return self._hashes.digest(exe, link, cycle.hash_deadline)


def _is_kernel_thread(pid: int, ppid: int) -> bool:
    return pid == _KTHREADD_PID or ppid == _KTHREADD_PID
