"""Process collection: turns successive views of the process table into events.

This is the only module that imports psutil or reads /proc: everything the
daemon knows about processes passes through :class:`ProcessCollector`.

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

import hashlib
import os
import pwd
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import psutil

from procmond.collect.process_event import EventType, ProcessEvent  # what collect() produces
from procmond.collect.redact import redact_cmdline

__all__ = [
    "MAX_CMDLINE_BYTES",
    "CollectorSettings",
    "CycleResult",
    "ProcessCollector",
    "bounded_cmdline",
]

_PROC: Final = "/proc"
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# The kernel truncates comm to 15 bytes; psutil then takes the cmdline's
# basename when it starts with comm. We do the same so names match psutil's.
_COMM_MAX: Final = 15
# /proc/[pid]/stat state letters, mapped to psutil's status strings.
_STATUS_BY_CODE: Final[dict[bytes, str]] = {
    b"R": psutil.STATUS_RUNNING,
    b"S": psutil.STATUS_SLEEPING,
    b"D": psutil.STATUS_DISK_SLEEP,
    b"T": psutil.STATUS_STOPPED,
    b"t": psutil.STATUS_TRACING_STOP,
    b"Z": psutil.STATUS_ZOMBIE,
    b"X": psutil.STATUS_DEAD,
    b"x": psutil.STATUS_DEAD,
    b"K": "wake-kill",  # psutil has no public constant for it
    b"W": psutil.STATUS_WAKING,
    b"I": psutil.STATUS_IDLE,
    b"P": psutil.STATUS_PARKED,
}
# Statuses worth an event when entered or left; everything else is "alive".
_NOTABLE_STATUS: Final[dict[str, str]] = {
    psutil.STATUS_ZOMBIE: "zombie",
    psutil.STATUS_STOPPED: "stopped",
    psutil.STATUS_TRACING_STOP: "stopped",
}
#: A command line is stored up to this many bytes (UTF-8, a byte per separator),
#: then cut, with a last element saying how much was left out. Linux allows
#: several MiB of arguments; uncut, one process could make an event bigger than
#: the whole write-ahead log (1 MiB at the least) and pause collection for good.
MAX_CMDLINE_BYTES: Final = 64 * 1024
_HASH_CHUNK: Final = 1 << 20
# Distinct executables on one host number in the hundreds; the bound only
# keeps a pathological host (many rebuilt binaries) from growing it forever.
_HASH_CACHE_MAX: Final = 4096


@dataclass(frozen=True)
class CollectorSettings:
    """What the collector gathers; replaced whole by ``update_settings``."""

    max_processes: int = 0  # 0 = no limit
    collect_enhanced_metadata: bool = True  # cpu_percent, memory_rss
    compute_executable_hashes: bool = False  # exe_sha256, within a time budget
    hash_budget_secs: float = 0.5  # per cycle


@dataclass(frozen=True)
class CycleResult:
    """The outcome of one ``collect()``."""

    events: list[ProcessEvent]
    processes: int
    errors: int
    duration_ms: float
    baseline: bool
    truncated: bool


@dataclass(slots=True)
class _Tracked:
    """What we remember about a live process between cycles."""

    pid: int
    start_time: float
    ppid: int
    comm: bytes  # the kernel's comm, compared every cycle, decoded into ``name`` on change
    status: str
    owner: int  # cheap uid: owner of /proc/[pid] (effective uid), or psutil's real uid
    cpu_secs: float
    rss: int
    sampled_at: float  # monotonic
    name: str = ""
    exe: str | None = None
    cmdline: tuple[str, ...] = ()
    username: str | None = None
    exe_sha256: str | None = None
    prev_cpu_secs: float | None = None  # None until a second sample exists
    prev_sampled_at: float = 0.0
    changed: tuple[str, ...] = field(default=())

    def cpu_percent(self, now: float) -> float:
        """Cpu use since the previous cycle; on first sight, the lifetime average."""
        if self.prev_cpu_secs is None:
            elapsed, used = now - self.start_time, self.cpu_secs
        else:
            elapsed, used = (
                self.sampled_at - self.prev_sampled_at,
                self.cpu_secs - self.prev_cpu_secs,
            )
        return round(used / elapsed * 100.0, 2) if elapsed > 0 else 0.0


@dataclass(slots=True)
class _Cycle:
    """Per-cycle scratch state: settings in force, clocks, counters, results."""

    settings: CollectorSettings
    baseline: bool
    now: float
    mono: float
    hash_deadline: float
    errors: int = 0
    events: list[ProcessEvent] = field(default_factory=list)
    seen: set[tuple[int, int]] = field(default_factory=set)
    kept_pids: set[int] = field(default_factory=set)  # present, unreadable: never "stop"


class ProcessCollector:
    """Diffs the process table between calls to ``collect()``; see the module docstring."""

    def __init__(self, settings: CollectorSettings = CollectorSettings()) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        # Key: (pid, start ticks since boot), exact integers, so a key never
        # drifts with the wall clock (the boot time psutil derives can move
        # by a second when the clock is stepped).
        self._tracked: dict[tuple[int, int], _Tracked] = {}
        self._baseline_done = False
        self._users: dict[int, str] = {}
        self._hashes: dict[tuple[str, int, int, int, int], str] = {}
        self._procfs = os.path.exists(f"{_PROC}/self/stat")
        self._boot_time = psutil.boot_time()

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
        cycle = _Cycle(
            settings, not self._baseline_done, time.time(), mono, mono + settings.hash_budget_secs
        )
        pids = self._list_pids()
        truncated = 0 < settings.max_processes < len(pids)
        if truncated:
            pids = pids[: settings.max_processes]
        if self._procfs:
            self._scan_procfs(pids, cycle)
        else:
            self._scan_psutil(pids, cycle)
        last_pid = pids[-1] if truncated and pids else None
        for key in [k for k in self._tracked if k not in cycle.seen]:
            pid = key[0]
            if pid in cycle.kept_pids or (last_pid is not None and pid > last_pid):
                continue  # not observed this cycle: no evidence that it stopped
            cycle.events.append(self._event("stop", self._tracked.pop(key), cycle))
        self._baseline_done = True
        return CycleResult(
            events=cycle.events,
            processes=len(cycle.seen),
            errors=cycle.errors,
            duration_ms=(time.perf_counter() - started) * 1000.0,
            baseline=cycle.baseline,
            truncated=truncated,
        )

    # -- the per-cycle scan --------------------------------------------------

    def _scan_procfs(self, pids: list[int], cycle: _Cycle) -> None:
        """One read of /proc/[pid]/stat (plus an fstat for the owner) per process."""
        proc_fd = os.open(_PROC, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for pid in pids:
                try:
                    fd = os.open(f"{pid}/stat", os.O_RDONLY, dir_fd=proc_fd)
                    try:
                        data = os.read(fd, 4096)
                        owner = os.fstat(fd).st_uid
                    finally:
                        os.close(fd)
                    # comm may hold spaces and ')': it ends at the last ')'.
                    close = data.rindex(b")")
                    rest = data[close + 2 :].split(None, 22)
                    start_ticks = int(rest[19])
                    comm = data[data.index(b"(") + 1 : close]
                    ppid, cpu_ticks, rss_pages = (
                        int(rest[1]),
                        int(rest[11]) + int(rest[12]),
                        int(rest[21]),
                    )
                except (FileNotFoundError, ProcessLookupError):
                    cycle.errors += 1  # exited between the listing and the read
                    continue
                except (OSError, ValueError, IndexError):
                    cycle.errors += 1
                    cycle.kept_pids.add(pid)
                    continue
                self._observe(
                    (pid, start_ticks),
                    start_ticks / _CLK_TCK + self._boot_time,
                    ppid,
                    comm,
                    _STATUS_BY_CODE.get(rest[0], "unknown"),
                    owner,
                    cpu_ticks / _CLK_TCK,
                    rss_pages * _PAGE_SIZE,
                    cycle,
                )
        finally:
            os.close(proc_fd)

    def _scan_psutil(self, pids: list[int], cycle: _Cycle) -> None:
        """The same fields through psutil, where there is no procfs (slower, portable)."""
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    times = proc.cpu_times()
                    create_time = proc.create_time()
                    fields = (proc.ppid(), proc.name(), proc.status(), proc.uids().real)
                    rss = proc.memory_info().rss
            except psutil.NoSuchProcess:
                cycle.errors += 1
                continue
            except psutil.Error:
                cycle.errors += 1
                cycle.kept_pids.add(pid)
                continue
            ppid, name, status, uid = fields
            self._observe(
                (pid, round((create_time - self._boot_time) * _CLK_TCK)),
                create_time,
                ppid,
                name.encode(),
                status,
                uid,
                times.user + times.system,
                rss,
                cycle,
            )

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
        cycle: _Cycle,
    ) -> None:
        """Fold one process's cheap fields into the tracked state; record any event."""
        cycle.seen.add(key)
        known = self._tracked.get(key)
        if known is None:
            self._on_new(key, start_time, ppid, comm, status, owner, cpu_secs, rss, cycle)
            return
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
            username = self._username(self._real_uid(key[0], owner))
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
                known.name = _decode(comm)
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
        cycle: _Cycle,
    ) -> None:
        """First sight of a key: read the expensive fields and report a start."""
        tracked = _Tracked(key[0], start_time, ppid, comm, status, owner, cpu_secs, rss, cycle.mono)
        try:
            tracked.name, tracked.exe, tracked.cmdline = self._read_expensive(key, comm)
            tracked.username = self._username(self._real_uid(key[0], owner))
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

    def _reread_after_exec(self, known: _Tracked, key: tuple[int, int], cycle: _Cycle) -> list[str]:
        """The name changed (exec or rename): re-read the expensive fields, name what moved."""
        try:
            name, exe, cmdline = self._read_expensive(key, known.comm)
        except (psutil.Error, OSError):
            cycle.errors += 1  # exited or denied meanwhile; keep what we knew
            name, exe, cmdline = _decode(known.comm), known.exe, known.cmdline
        changed = ["name"] if name != known.name else []
        if exe != known.exe:
            changed.append("exe")
            known.exe_sha256 = self._hash_exe(key[0], exe, cycle)
        if cmdline != known.cmdline:
            changed.append("cmdline")
        known.name, known.exe, known.cmdline = name, exe, cmdline
        return changed or ["name"]  # comm moved even though the long name did not

    def _event(
        self, kind: EventType, t: _Tracked, cycle: _Cycle, *, baseline: bool = False
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

    def _list_pids(self) -> list[int]:
        """Every pid, ascending (so ``max_processes`` keeps the lowest)."""
        if self._procfs:
            return sorted(int(n) for n in os.listdir(_PROC) if n.isdigit())
        return sorted(psutil.pids())

    def _current_key(self, pid: int) -> tuple[int, int]:
        """The key of whatever process holds ``pid`` now, computed as the scan does."""
        if not self._procfs:
            create_time = psutil.Process(pid).create_time()
            return (pid, round((create_time - self._boot_time) * _CLK_TCK))
        data = _read_file(f"{_PROC}/{pid}/stat")
        return (pid, int(data[data.rindex(b")") + 2 :].split(None, 20)[19]))

    def _read_expensive(
        self, key: tuple[int, int], comm: bytes
    ) -> tuple[str, str | None, tuple[str, ...]]:
        """Name (long form), exe and redacted cmdline, through psutil."""
        proc = psutil.Process(key[0])
        with proc.oneshot():
            try:
                args = proc.cmdline()
            except (psutil.AccessDenied, psutil.ZombieProcess):
                args = []
            try:
                exe: str | None = proc.exe() or None
            except (psutil.AccessDenied, psutil.ZombieProcess):
                exe = None
        if self._current_key(key[0]) != key:
            raise psutil.NoSuchProcess(key[0])  # the pid was recycled while we read
        name = _decode(comm)
        if len(name) >= _COMM_MAX and args:
            long_name = os.path.basename(args[0])
            if long_name.startswith(name):
                name = long_name
        # Redact first: a cut could split a secret from the flag that marks it.
        return name, exe, bounded_cmdline(redact_cmdline(args))

    def _real_uid(self, pid: int, owner: int) -> int | None:
        """The real uid (what psutil's username() reports), from /proc/[pid]/status."""
        if not self._procfs:
            return owner  # the psutil scan already reads the real uid
        try:
            data = _read_file(f"{_PROC}/{pid}/status")
        except OSError:
            return None
        at = data.find(b"\nUid:")
        return int(data[at + 5 :].split(None, 1)[0]) if at >= 0 else None

    def _username(self, uid: int | None) -> str | None:
        """uid -> user name, cached; an unknown uid is shown as its number, like psutil."""
        if uid is None:
            return None
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name

    def _hash_exe(self, pid: int, exe: str | None, cycle: _Cycle) -> str | None:
        """SHA-256 of the running executable, cached, within the cycle's time budget."""
        if not cycle.settings.compute_executable_hashes or exe is None:
            return None
        # /proc/[pid]/exe reaches the binary even when deleted or in another
        # mount namespace; its stat identifies the file actually running.
        link = f"{_PROC}/{pid}/exe" if self._procfs else exe
        try:
            st = os.stat(link)
        except OSError:
            return None
        key = (exe, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._hashes.get(key)
        if cached is not None or time.monotonic() >= cycle.hash_deadline:
            return cached
        digest = hashlib.sha256()
        try:
            with open(link, "rb") as f:
                for chunk in _chunks(f.fileno()):
                    digest.update(chunk)
                    if time.monotonic() >= cycle.hash_deadline:
                        return None  # out of budget: this event goes without a hash
        except OSError:
            return None
        if len(self._hashes) >= _HASH_CACHE_MAX:
            self._hashes.pop(next(iter(self._hashes)))
        self._hashes[key] = result = digest.hexdigest()
        return result


#: kthreadd: the parent of every kernel thread on Linux.
_KTHREADD_PID: Final = 2


def bounded_cmdline(args: list[str], limit: int = MAX_CMDLINE_BYTES) -> tuple[str, ...]:
    """``args`` if they fit in ``limit`` bytes, else the head that fits plus a marker
    ``"[N bytes truncated]"`` (N counts what was left out, separators included)."""
    sizes = [len(arg.encode("utf-8", "surrogateescape")) + 1 for arg in args]
    total = sum(sizes)
    if total <= limit:
        return tuple(args)
    kept: list[str] = []
    room = limit
    for arg, size in zip(args, sizes, strict=True):
        if size > room:
            if room > 1:
                head = arg.encode("utf-8", "surrogateescape")[: room - 1]
                kept.append(head.decode("utf-8", "ignore"))
            break
        kept.append(arg)
        room -= size
    used = sum(len(arg.encode("utf-8", "surrogateescape")) + 1 for arg in kept)
    kept.append(f"[{total - used} bytes truncated]")
    return tuple(kept)


def _is_kernel_thread(pid: int, ppid: int) -> bool:
    return pid == _KTHREADD_PID or ppid == _KTHREADD_PID


def _decode(comm: bytes) -> str:
    """The kernel's comm as text (it is bytes; invalid UTF-8 is replaced, as psutil does)."""
    return comm.decode("utf-8", "replace")


def _read_file(path: str) -> bytes:
    """One procfs file in one read (stat fits easily; status has Uid in its first 4 KiB)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _chunks(fd: int) -> Iterator[bytes]:
    """Read a file descriptor to the end in large chunks."""
    while chunk := os.read(fd, _HASH_CHUNK):
        yield chunk
