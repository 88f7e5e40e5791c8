"""Recorders the event loop updates and a scrape reads: no locks, no awaits.

``prometheus_client``'s own ``Histogram`` takes a mutex on every ``observe``
and on every read; a scrape thread that loses the GIL while holding it
would make the loop wait. These keep plain lists and dictionaries instead,
written on the event loop only; a scrape copies them (``list(...)`` of a
list or a dict's items is one C call, atomic under the GIL) and turns the
copy into a metric family (:mod:`procmond.metrics.daemon`). The ``sum`` may
trail the buckets by one observation in a scrape that lands mid-update: a
rounding error, never a broken histogram (the ``+Inf`` bucket *is* the count).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "CYCLE_BUCKETS_S",
    "OTHER_OPERATION",
    "RPC_BUCKETS_S",
    "Buckets",
    "HistogramSnapshot",
    "RpcRecorder",
]

#: A cycle over ~300 processes takes 20-60 ms (docs/performance.md); a few
#: thousand take a second or more. The buckets span both, plus a stalled host.
CYCLE_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: A HealthCheck is answered in about a millisecond; UpdateConfig waits for the
#: cycle boundary, GracefulShutdown for the drain (up to its 30 s default).
RPC_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0)
#: The label of any operation name that is not served: names come from the
#: wire, and one label value per made-up name would grow without bound.
OTHER_OPERATION: Final = "other"


@dataclass(frozen=True)
class HistogramSnapshot:
    """Cumulative bucket counts (``le`` upper bounds, ``+Inf`` last) and the sum."""

    buckets: list[tuple[str, float]]
    sum: float


@dataclass
class Buckets:
    """A histogram as plain numbers: one count per bound and an overflow, and the sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError("bucket bounds must be increasing")
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Count ``value`` (on the event loop)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        """The cumulative buckets as Prometheus wants them (from any thread)."""
        counts = list(self.counts)
        total = self.sum
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return HistogramSnapshot(cumulative, total)


class RpcRecorder:
    """Answered requests by operation and status, and their durations by operation."""

    def __init__(self, operations: Iterable[str]) -> None:
        self._known = frozenset(operations)
        self.requests: dict[tuple[str, str], int] = {}
        self.durations: dict[str, Buckets] = {}

    def answered(self, operation: str, status: str, seconds: float) -> None:
        """One answer went out (the RPC service's hook, on the event loop)."""
        op = operation if operation in self._known else OTHER_OPERATION
        key = (op, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        buckets = self.durations.get(op)
        if buckets is None:
            buckets = self.durations[op] = Buckets(RPC_BUCKETS_S)
        buckets.observe(seconds)

    def request_counts(self) -> list[tuple[tuple[str, str], int]]:
        """A copy of the counts (from any thread)."""
        return list(self.requests.items())

    def duration_snapshots(self) -> list[tuple[str, HistogramSnapshot]]:
        """A copy of each operation's histogram (from any thread)."""
        return [(op, buckets.snapshot()) for op, buckets in list(self.durations.items())]
