"""The cheap half of collection: listing pids and reading every process's cheap fields.

On Linux one read of ``/proc/[pid]/stat`` plus an ``fstat`` of the same open
file gives pid, ppid, comm, start time, status, owner uid, cpu time and
resident set size (why procfs and not psutil's per-field reads: see the
theory of operation in :mod:`procmond.collect.collector`). Where there is no
procfs, psutil reads the same fields. Each process read is handed to an
``observe`` callback, the collector's; a process that cannot be read is
counted in the cycle instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

import psutil

from procmond.collect.state import Cycle

__all__ = [
    "CLK_TCK",
    "PAGE_SIZE",
    "PROC",
    "STATUS_BY_CODE",
    "Observe",
    "current_key",
    "list_pids",
    "read_file",
    "real_uid",
    "scan_procfs",
    "scan_psutil",
]

PROC: Final = "/proc"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# /proc/[pid]/stat state letters, mapped to psutil's status strings.
STATUS_BY_CODE: Final[dict[bytes, str]] = {
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

Observe = Callable[[tuple[int, int], float, int, bytes, str, int, float, int, Cycle], None]
"""(key, start_time, ppid, comm, status, owner, cpu_secs, rss, cycle): one process read."""


def list_pids(procfs: bool) -> list[int]:
    """Every pid, ascending (so ``max_processes`` keeps the lowest)."""
    if procfs:
        return sorted(int(n) for n in os.listdir(PROC) if n.isdigit())
    return sorted(psutil.pids())


def scan_procfs(pids: list[int], boot_time: float, cycle: Cycle, observe: Observe) -> None:
    """One read of /proc/[pid]/stat (plus an fstat for the owner) per process."""
    proc_fd = os.open(PROC, os.O_RDONLY | os.O_DIRECTORY)
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
            observe(
                (pid, start_ticks),
                start_ticks / CLK_TCK + boot_time,
                ppid,
                comm,
                STATUS_BY_CODE.get(rest[0], "unknown"),
                owner,
                cpu_ticks / CLK_TCK,
                rss_pages * PAGE_SIZE,
                cycle,
            )
    finally:
        os.close(proc_fd)


def scan_psutil(pids: list[int], boot_time: float, cycle: Cycle, observe: Observe) -> None:
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
        observe(
            (pid, round((create_time - boot_time) * CLK_TCK)),
            create_time,
            ppid,
            name.encode(),
            status,
            uid,
            times.user + times.system,
            rss,
            cycle,
        )


def current_key(pid: int, procfs: bool, boot_time: float) -> tuple[int, int]:
    """The key of whatever process holds ``pid`` now, computed as the scan does."""
    if not procfs:
        create_time = psutil.Process(pid).create_time()
        return (pid, round((create_time - boot_time) * CLK_TCK))
    data = read_file(f"{PROC}/{pid}/stat")
    return (pid, int(data[data.rindex(b")") + 2 :].split(None, 20)[19]))


def real_uid(pid: int, owner: int, procfs: bool) -> int | None:
    """The real uid (what psutil's username() reports), from /proc/[pid]/status."""
    if not procfs:
        return owner  # the psutil scan already reads the real uid
    try:
        data = read_file(f"{PROC}/{pid}/status")
    except OSError:
        return None
    at = data.find(b"\nUid:")
    return int(data[at + 5 :].split(None, 1)[0]) if at >= 0 else None


def read_file(path: str) -> bytes:
    """One procfs file in one read (stat fits easily; status has Uid in its first 4 KiB)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)
