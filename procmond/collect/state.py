"""What the process collector keeps: its settings, what it remembers of each live
process between cycles, one cycle's scratch state, and a cycle's result.

Plain data for :mod:`procmond.collect.collector` and the modules it reads the
process table with; no psutil, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from procmond.collect.process_event import ProcessEvent

__all__ = ["CollectorSettings", "Cycle", "CycleResult", "Tracked"]


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
class Tracked:
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
class Cycle:
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
