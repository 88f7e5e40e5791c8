"""The actor's mailbox: a bounded FIFO of messages, each with a future for its answer.

The mailbox knows nothing of lifecycle states (admission is the actor's, from
:mod:`fsm`); it only bounds, orders and accounts. A full mailbox refuses at
once with ``BUSY`` (issue 3: nothing ever blocks the caller); ``priority``
messages (the daemon's own ticks and signals) skip the bound, so a flood of
requests cannot keep a SIGTERM out. Protocol section 10, fair share: no one
caller (the request's ``client_id``, the message's ``caller``) may hold
more than a quarter of the mailbox; past that its requests are answered
``BUSY`` at once while other callers are still taken (issue 11: one client
pipelining 1,000 HealthChecks had the operator's request answered ``BUSY``).
A caller that gave up can take its message back while it still waits
(:meth:`Mailbox.withdraw`). When the actor
stops, :meth:`Mailbox.fail_all` answers everything still queued.

Deadlines have one owner here (trio's scopes, pykka's ``ask``):
:meth:`Mailbox.ask` answers ``DEADLINE_EXCEEDED`` when the deadline has
passed before the message was taken (at once, or by withdrawing it), and
``TIMEOUT`` when it was taken but not answered in time; :meth:`Mailbox.get`
never hands out a message whose deadline passed while it waited. The actor
bounds execution by the same deadline (:attr:`Envelope.deadline`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from procmond.daemon.messages import Message, Outcome, caller_of
from procmond.daemon.readiness import Counter
from procmond.errors import Refused
from procmond.protocol import ErrorCode

__all__ = [
    "BUSY_RETRY_AFTER_MS",
    "DEFAULT_MAILBOX_SIZE",
    "FAIR_SHARE_DIVISOR",
    "Envelope",
    "Mailbox",
    "loop_time",
]

log = logging.getLogger("procmond.actor")

#: Issue 3: the mailbox holds 100 messages by default.
DEFAULT_MAILBOX_SIZE: Final = 100
#: Protocol section 4: BUSY tells the caller when to try again.
BUSY_RETRY_AFTER_MS: Final = 100
#: Protocol section 10: one caller holds at most a quarter of the mailbox.
FAIR_SHARE_DIVISOR: Final = 4


@dataclass
class Envelope:
    """A queued message, its answer's future and its timings (``time.monotonic``)."""

    message: Message
    future: asyncio.Future[Outcome]
    enqueued_at: float
    deadline: float | None
    started_at: float = field(default=0.0)
    #: The caller it is held for (its ``client_id``); None for the daemon's own.
    owner: str | None = None


class Mailbox:
    """Bounded FIFO of :class:`Envelope`; one consumer (the actor task)."""

    def __init__(self, size: int = DEFAULT_MAILBOX_SIZE) -> None:
        if size < 1:
            raise ValueError(f"mailbox size must be at least 1, not {size}")
        self.size = size
        #: The most messages one owner may hold at once: a quarter, at least 1.
        self.share = max(1, size // FAIR_SHARE_DIVISOR)
        self._queue: collections.deque[Envelope] = collections.deque()
        #: Messages held now per owner (owners holding none are not kept).
        self._held: collections.Counter[str] = collections.Counter()
        self._mail = asyncio.Event()
        self._closed = False
        #: Requests answered BUSY: the mailbox was full or their caller held its share.
        self.busy_total = 0
        #: Of those, the ones answered BUSY because their caller held its whole share.
        self.share_busy_total = 0
        #: The most messages held when a request was admitted: at most ``size``
        #: (priority messages are not bounded and not counted).
        self.high_water = 0
        #: Messages handed to the consumer (readiness: "message taken").
        self.taken = Counter()

    def __len__(self) -> int:
        return len(self._queue)

    def held_by(self, owner: str) -> int:
        """Messages queued now for ``owner``."""
        return self._held[owner]

    def put(
        self, message: Message, *, deadline: float | None = None, priority: bool = False
    ) -> asyncio.Future[Outcome]:
        """Queue ``message`` and return its future; :class:`Refused` ``BUSY`` when full,
        or when its caller already holds its share (a quarter of the mailbox)."""
        owner = caller_of(message)
        if not priority and owner is not None and self._held[owner] >= self.share:
            self.busy_total += 1
            self.share_busy_total += 1
            if self.share_busy_total == 1 or self.share_busy_total % 100 == 0:
                log.warning(
                    "client %s holds its share of the mailbox (%d of %d): answering it BUSY "
                    "(%d such answers so far)",
                    owner,
                    self.share,
                    self.size,
                    self.share_busy_total,
                )
            raise Refused(
                ErrorCode.BUSY,
                f"this caller already has {self.share} requests waiting, its share of the "
                "collector's mailbox; retry later",
                {"retry_after_ms": BUSY_RETRY_AFTER_MS, "share": self.share},
            )
        if not priority and len(self._queue) >= self.size:
            self.busy_total += 1
            full = self.busy_total - self.share_busy_total
            if full == 1 or full % 100 == 0:
                log.warning(
                    "mailbox full (%d messages): answering BUSY (%d so far)", self.size, full
                )
            raise Refused.busy(BUSY_RETRY_AFTER_MS)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append(Envelope(message, future, time.monotonic(), deadline, owner=owner))
        if owner is not None:
            self._held[owner] += 1
        if not priority:
            self.high_water = max(self.high_water, len(self._queue))
        self._mail.set()
        return future

    def withdraw(self, future: asyncio.Future[Outcome]) -> bool:
        """Take a still-queued message back (its caller gave up); False once it was taken."""
        for envelope in self._queue:
            if envelope.future is future:
                self._queue.remove(envelope)
                self._release(envelope)
                future.cancel()
                return True
        return False

    def _popleft(self) -> Envelope:
        envelope = self._queue.popleft()
        self._release(envelope)
        return envelope

    def _release(self, envelope: Envelope) -> None:
        owner = envelope.owner
        if owner is not None:
            self._held[owner] -= 1
            if self._held[owner] <= 0:
                del self._held[owner]

    async def ask(
        self, message: Message, deadline: float, *, deadline_name: str = "the deadline"
    ) -> Outcome:
        """Queue ``message`` and wait for its answer until ``deadline`` (``time.monotonic``).

        Never raises for the caller's sake: a full mailbox is a ``BUSY`` outcome,
        a deadline that passed before the message was taken is
        ``DEADLINE_EXCEEDED`` (the message is withdrawn, nothing ran), one that
        passed while it ran is ``TIMEOUT`` naming ``deadline_name``.
        """
        received = time.monotonic()
        if received >= deadline:
            return Outcome(error=Refused.deadline_exceeded("the deadline had passed on arrival"))
        try:
            future = self.put(message, deadline=deadline)
        except Refused as exc:
            return Outcome(error=exc)
        try:
            async with asyncio.timeout_at(loop_time(deadline)):
                return await asyncio.shield(future)
        except TimeoutError:
            if future.done() and not future.cancelled():
                return future.result()  # answered just as the timer fired: keep the answer
            waited_ms = (time.monotonic() - received) * 1000
            if self.withdraw(future):
                error = Refused.deadline_exceeded("the deadline passed while queued")
                return Outcome(error=error, queue_ms=waited_ms)
            future.cancel()
            error = Refused.timeout(f"execution did not finish within {deadline_name}")
            return Outcome(error=error, execution_ms=waited_ms)

    async def get(self) -> Envelope | None:
        """The next envelope, waiting for one; None once :meth:`close` was called.

        A message whose caller gave up, or whose deadline passed while it
        waited, is answered (``DEADLINE_EXCEEDED``) and skipped.
        """
        while not self._closed:
            if self._queue:
                envelope = self._popleft()
                now = time.monotonic()
                if envelope.future.done():
                    continue
                if envelope.deadline is not None and now >= envelope.deadline:
                    error = Refused.deadline_exceeded("the deadline passed while queued")
                    queue_ms = (now - envelope.enqueued_at) * 1000
                    envelope.future.set_result(Outcome(error=error, queue_ms=queue_ms))
                    continue
                envelope.started_at = now
                self.taken.add()
                return envelope
            self._mail.clear()
            await self._mail.wait()
        return None

    def close(self) -> None:
        """Make :meth:`get` return None (what is queued stays for :meth:`fail_all`)."""
        self._closed = True
        self._mail.set()

    def fail_all(self, error: Callable[[Envelope], Refused]) -> None:
        """Answer every queued message with ``error(envelope)``."""
        while self._queue:
            envelope = self._popleft()
            if not envelope.future.done():
                queue_ms = (time.monotonic() - envelope.enqueued_at) * 1000
                envelope.future.set_result(Outcome(error=error(envelope), queue_ms=queue_ms))


def loop_time(monotonic_deadline: float) -> float:
    """A ``time.monotonic`` instant on the running loop's clock."""
    return asyncio.get_running_loop().time() + (monotonic_deadline - time.monotonic())
