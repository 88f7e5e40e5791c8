"""The answer cache: a repeated ``(client_id, request_id)`` gets the first answer again.

Protocol section 3 makes a repeat idempotent: answered with the first answer,
never executed twice. Section 10 bounds how long that has to hold: a request's
deadline is at most 300 s after its timestamp, and a repeat that arrives after
the deadline is answered ``DEADLINE_EXCEEDED`` without looking here. So an
entry lives until its request's deadline (at most 300 s from receipt), and
the cache is bounded twice, oldest first out:

* in **bytes** (:data:`MAX_ANSWER_BYTES`): each entry counts its key, its
  answer once made, and :data:`ENTRY_OVERHEAD_BYTES` for the Python objects
  around them. Issue 11: a cache bounded only by count held 300 answers
  echoing a 1,000,000-character ``correlation_id``: RSS 50 -> 354 MB;
* in **entries** (:data:`MAX_ANSWER_ENTRIES`).

An entry whose answer is still being made (the request runs) is counted with
its key only; the answer's bytes are added when :meth:`AnswerCache.fill`
stores it. Eviction of such an entry only means a repeat would run again.
Time is an input (``now``, ``time.monotonic`` seconds) so the core is tested
without waiting.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
from dataclasses import dataclass
from typing import Final

from procmond.protocol import MAX_DEADLINE_SPAN_S

__all__ = [
    "ENTRY_OVERHEAD_BYTES",
    "MAX_ANSWER_BYTES",
    "MAX_ANSWER_ENTRIES",
    "AnswerCache",
]

#: Answers remembered at most. Agents retry within seconds; 10,000 entries
#: cover minutes of heavy traffic.
MAX_ANSWER_ENTRIES: Final = 10_000
#: Bytes of answers remembered at most: 8 MiB. A HealthCheck answer is about
#: 1.3 kB, most others under 700 B, so the count bound is usually the one
#: reached; this one holds whatever the answers hold.
MAX_ANSWER_BYTES: Final = 8 * 1024 * 1024
#: The Python objects of one entry beyond the key and answer bytes (the
#: future, the entry, the dict and heap slots): 483 B measured with tracemalloc
#: over 10,000 entries, rounded up.
ENTRY_OVERHEAD_BYTES: Final = 600

Key = tuple[str, str]


@dataclass
class _Entry:
    answer: asyncio.Future[bytes]
    expires: float
    size: int
    seq: int


class AnswerCache:
    """Answers by ``(client_id, request_id)``, bounded in bytes and count, expiring."""

    def __init__(
        self, *, max_bytes: int = MAX_ANSWER_BYTES, max_entries: int = MAX_ANSWER_ENTRIES
    ) -> None:
        if max_bytes < 1 or max_entries < 1:
            raise ValueError("the answer cache needs room for at least one entry")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        #: Oldest first (insertion order).
        self._entries: collections.OrderedDict[Key, _Entry] = collections.OrderedDict()
        #: (expires, seq, key) of every entry, stale ones included until popped.
        self._expiry: list[tuple[float, int, Key]] = []
        self._seq = 0
        #: Bytes accounted for the entries held now.
        self.bytes = 0
        #: Entries dropped for the bounds (not for expiry).
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, now: float) -> asyncio.Future[bytes] | None:
        """The answer (maybe still being made) of an unexpired earlier request."""
        self._expire(now)
        entry = self._entries.get(key)
        return None if entry is None else entry.answer

    def reserve(self, key: Key, expires: float, now: float) -> asyncio.Future[bytes]:
        """A future for the answer of a new request, remembered until ``expires``.

        ``expires`` is capped at 300 s from ``now`` (protocol section 10).
        """
        self._expire(now)
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._seq += 1
        entry = _Entry(
            answer,
            min(expires, now + MAX_DEADLINE_SPAN_S),
            ENTRY_OVERHEAD_BYTES + len(key[0]) + len(key[1]),
            self._seq,
        )
        self._entries[key] = entry
        self.bytes += entry.size
        heapq.heappush(self._expiry, (entry.expires, entry.seq, key))
        self._bound()
        return answer

    def fill(self, key: Key, answer: asyncio.Future[bytes], data: bytes) -> None:
        """Give the answer ``data`` to its waiters and account its bytes (if still held)."""
        if not answer.done():
            answer.set_result(data)
        entry = self._entries.get(key)
        if entry is not None and entry.answer is answer:
            entry.size += len(data)
            self.bytes += len(data)
            self._bound()

    def _bound(self) -> None:
        """Evict oldest first until both bounds hold (the newest entry always stays)."""
        while len(self._entries) > 1 and (
            self.bytes > self.max_bytes or len(self._entries) > self.max_entries
        ):
            _, entry = self._entries.popitem(last=False)
            self.bytes -= entry.size
            self.evicted += 1
        # Stale heap items (evicted or replaced entries) are dropped once they
        # outnumber the live ones, so the heap stays within twice the cache.
        if len(self._expiry) > 2 * len(self._entries) + 64:
            self._expiry = [(e.expires, e.seq, k) for k, e in self._entries.items()]
            heapq.heapify(self._expiry)

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, seq, key = heapq.heappop(self._expiry)
            entry = self._entries.get(key)
            if entry is not None and entry.seq == seq:
                del self._entries[key]
                self.bytes -= entry.size
