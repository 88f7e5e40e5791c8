"""Prometheus metrics of the collector and the reference agent (issue 13).

The one place that imports ``prometheus_client`` (``tests/test_imports.py``):

* :mod:`~procmond.metrics.recorders`: lock-free histograms and counters the
  event loop updates with plain arithmetic (the RPC service's and the
  collection's hooks feed them); no ``prometheus_client`` here, so the hot
  paths import nothing of it.
* :mod:`~procmond.metrics.daemon`: the collector's custom ``Collector``,
  reading the daemon's plain attributes at scrape time.
* :mod:`~procmond.metrics.agent`: the reference agent's fleet view.
* :mod:`~procmond.metrics.endpoint`: the HTTP ``/metrics`` server (a thread of
  ``prometheus_client``), started and stopped as one part.

Scrapes never block the event loop or a cycle: the server answers on its
own thread, and every collector there reads attributes (ints, floats, enum
members, ``len()`` of a deque) that the loop replaces atomically under the
GIL, taking no lock and awaiting nothing. A scrape may see one counter a
moment older than another; each value is one the daemon really had.
"""
