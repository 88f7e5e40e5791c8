"""Small builders of ``prometheus_client`` metric families shared by both collectors."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from procmond.metrics.recorders import HistogramSnapshot

__all__ = ["counter", "gauge", "histogram", "one_hot"]


def gauge(name: str, documentation: str, value: float) -> Metric:
    """An unlabelled gauge."""
    return GaugeMetricFamily(name, documentation, value=value)


def counter(name: str, documentation: str, value: float) -> Metric:
    """An unlabelled counter (``name`` ends in ``_total``)."""
    return CounterMetricFamily(name, documentation, value=value)


def one_hot(
    name: str, documentation: str, label: str, values: Iterable[str], current: str
) -> Metric:
    """A gauge with one series per possible value: 1 for ``current``, 0 for the others.

    Every value is always exported, so ``max_over_time(x{label="v"}[5m])``
    and alerts on a value that is rare work without absent series.
    """
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for value in values:
        family.add_metric([value], 1.0 if value == current else 0.0)
    return family


def histogram(
    name: str,
    documentation: str,
    snapshots: Iterable[tuple[list[str], HistogramSnapshot]],
    labels: Iterable[str] = (),
) -> Metric:
    """A histogram family from :class:`HistogramSnapshot` values, one per label set."""
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for label_values, snapshot in snapshots:
        family.add_metric(label_values, snapshot.buckets, snapshot.sum)
    return family
