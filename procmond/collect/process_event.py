"""A process event as the collector saw it, and its wire form (protocol section 8).

Kept apart from :mod:`procmond.collect.collector` (which produces events) because
the pipeline, the benchmarks and the tests build and encode events without
collecting anything.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

__all__ = ["EventSource", "EventType", "ProcessEvent", "rfc3339"]

#: Protocol sections 8 and 9: ``exec`` only comes from the kernel's process events.
EventType = Literal["start", "stop", "modify", "exec"]
#: Protocol section 9: who saw it, the kernel's process connector or a cycle.
EventSource = Literal["kernel", "cycle"]


@dataclass(frozen=True)
class ProcessEvent:
    """One process event, as the collector saw it."""

    event_type: EventType
    pid: int
    ppid: int
    name: str | None
    exe: str | None
    cmdline: tuple[str, ...] | None
    username: str | None
    start_time: float
    status: str
    observed_at: float
    baseline: bool = False
    cpu_percent: float | None = None
    memory_rss: int | None = None
    exe_sha256: str | None = None
    changed: tuple[str, ...] = ()
    source: EventSource = "cycle"
    #: When the kernel reported it (epoch seconds); None: when the cycle saw it.
    event_time: float | None = None
    #: The process was gone before its details could be read (the missing ones are null).
    partial: bool = False
    #: A kernel ``stop``: the exit code and the terminating signal (null from a cycle).
    exit_code: int | None = None
    exit_signal: int | None = None

    def to_wire(self) -> dict[str, object]:
        """The protocol's ``event`` object, without ``collector_id`` and ``seq``."""
        wire: dict[str, object] = {
            "event_type": self.event_type,
            "pid": self.pid,
            "ppid": self.ppid,
            "name": self.name,
            "exe": self.exe,
            "cmdline": list(self.cmdline) if self.cmdline is not None else None,
            "username": self.username,
            "start_time": rfc3339(self.start_time),
            "status": self.status,
            "observed_at": rfc3339(self.observed_at),
            "source": self.source,
            "event_time": rfc3339(
                self.event_time if self.event_time is not None else self.observed_at
            ),
            "partial": self.partial,
        }
        if self.event_type == "stop":
            wire["exit_code"] = self.exit_code
            wire["exit_signal"] = self.exit_signal
        if self.cpu_percent is not None:
            wire["cpu_percent"] = self.cpu_percent
        if self.memory_rss is not None:
            wire["memory_rss"] = self.memory_rss
        if self.exe_sha256 is not None:
            wire["exe_sha256"] = self.exe_sha256
        if self.baseline:
            wire["baseline"] = True
        if self.event_type == "modify":
            wire["changed"] = list(self.changed)
        return wire


@functools.lru_cache(maxsize=4096)
def _whole_second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def rfc3339(epoch_secs: float) -> str:
    """RFC 3339 UTC with microseconds and 'Z', as the wire contract spells it.

    Events of one cycle share their observed second and many processes their
    start second, so the formatted second is cached (the event encoder's
    hottest call, bench_throughput's profile: 1.8 us a call uncached).
    """
    # Rounded exactly as datetime.fromtimestamp rounds (half to even).
    fraction, whole = math.modf(epoch_secs)
    micros = round(fraction * 1e6)
    seconds = int(whole)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    elif micros < 0:
        seconds, micros = seconds - 1, micros + 1_000_000
    return f"{_whole_second(seconds)}.{micros:06d}Z"
