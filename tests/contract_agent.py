"""A minimal supervising agent written only from /work/shared/protocol.md.

It talks to Redis with redis-py directly and imports nothing of procmond, so
an end-to-end test driven by it checks procmond against the written contract
rather than against procmond's own idea of it.

* answers ``Register`` (accept, reject or ignore; scriptable per attempt) and
  ``Deregister`` on ``control.registration.{collector_id}`` (protocol version
  2, section 2: it pattern-subscribes ``control.registration.*``); a request
  whose ``client_id`` is not the collector id of its topic is recorded in
  :attr:`ContractAgent.misaddressed` and not answered;
* records status announcements and heartbeats per collector with their
  receive times, and lets a test await them;
* sends RPCs to a collector (subscribing its reply topic before publishing);
* reads the event streams and checks ``seq`` contiguity per collector.

Reconnects on its own after a Redis restart (it re-subscribes everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

#: Protocol version 2, section 2: one registration topic per collector.
REGISTRATION_PREFIX = "control.registration."
REGISTRATION_PATTERN = REGISTRATION_PREFIX + "*"
#: Sections 8 and 9 (v2 adds ``exec``); reading a stream nobody wrote is harmless.
STREAMS = (
    "events.process.start",
    "events.process.stop",
    "events.process.modify",
    "events.process.exec",
)


def registration_topic(collector_id: str) -> str:
    """Where ``collector_id`` sends Register and Deregister (protocol v2, section 2)."""
    return REGISTRATION_PREFIX + collector_id


RegisterMode = Literal["accept", "reject", "ignore"]


class NotListeningError(Exception):
    """PUBLISH reached nobody: the collector is not subscribed to its topic (yet)."""


def rfc3339(moment: datetime) -> str:
    """The protocol's timestamp spelling."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def envelope(
    operation: str,
    payload: Any,
    *,
    client_id: str,
    target: str,
    request_id: str | None = None,
    deadline: datetime | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """A request envelope of protocol section 3."""
    now = datetime.now(UTC)
    return {
        "request_id": request_id or uuid.uuid4().hex,
        "client_id": client_id,
        "target": target,
        "operation": operation,
        "payload": payload,
        "timestamp": rfc3339(now),
        "deadline": rfc3339(deadline or now + timedelta(seconds=timeout)),
    }


@dataclass
class Received:
    """One message the agent got, with its local receive time (monotonic) and its topic."""

    at: float
    message: dict[str, Any]
    channel: str = ""


@dataclass
class _Log:
    items: list[Received] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, message: dict[str, Any], channel: str = "") -> None:
        self.items.append(Received(time.monotonic(), message, channel))
        self.changed.set()

    async def wait(self, predicate: Callable[[list[Received]], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.items):
                self.changed.clear()
                await self.changed.wait()


class ContractAgent:
    """The agent side of the wire contract, for tests."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str = "test-agent",
        register_mode: RegisterMode = "accept",
        heartbeat_interval_ms: int | None = None,
    ) -> None:
        self.url = url
        self.client_id = client_id
        self.register_mode: RegisterMode = register_mode
        #: Modes used for the next Register requests, in order, before register_mode.
        self.register_script: list[RegisterMode] = []
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.answer_deregister = True
        self.registers = _Log()
        self.deregisters = _Log()
        #: Registration requests whose client_id is not their topic's collector id.
        self.misaddressed = _Log()
        self.statuses: defaultdict[str, _Log] = defaultdict(_Log)
        self.heartbeats: defaultdict[str, _Log] = defaultdict(_Log)
        self.responses = _Log()
        self.subscribed = asyncio.Event()
        self.reconnects = 0
        self._redis: Redis | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> ContractAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect and subscribe; returns once every subscription is confirmed."""
        # from_url gets no retry unless given one (LIBRARY-NOTES): a few quick
        # retries let an answer go out on a fresh connection after a restart.
        self._redis = Redis.from_url(
            self.url,
            socket_connect_timeout=2,
            socket_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), 5),
        )
        self._reader = asyncio.create_task(self._read_forever(), name="contract-agent")
        async with asyncio.timeout(10):
            await self.subscribed.wait()

    async def close(self) -> None:
        """Stop reading and close the connection (bounded).

        Python 3.11's ``asyncio.wait_for`` inside redis-py can swallow a
        cancellation (see procmond.bus.redis._cancel_and_wait): a single cancel()
        once left the reader looping and close() waiting forever. So cancel
        again until the reader is gone, a bounded number of times.
        """
        if self._reader is not None:
            for _ in range(50):
                if self._reader.done():
                    break
                self._reader.cancel()
                await asyncio.wait({self._reader}, timeout=0.1)
            if self._reader.done() and not self._reader.cancelled():
                self._reader.exception()  # retrieved: not logged as never retrieved
        if self._redis is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._redis.aclose()

    @property
    def redis(self) -> Redis:
        """The command connection (for streams and raw publishing)."""
        assert self._redis is not None
        return self._redis

    async def _read_forever(self) -> None:
        """One pub/sub session after another: a Redis restart is retried every 10 ms."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(f"control.rpc.response.{self.client_id}")
                await pubsub.psubscribe(
                    REGISTRATION_PATTERN, "control.health.status.*", "control.health.heartbeat.*"
                )
                confirmations = 0
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    kind = message["type"]
                    if kind in (b"subscribe", b"psubscribe", "subscribe", "psubscribe"):
                        confirmations += 1
                        if confirmations == 4:
                            self.subscribed.set()
                        continue
                    await self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                self.subscribed.clear()
                self.reconnects += 1
                await asyncio.sleep(0.01)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _dispatch(self, message: dict[str, Any]) -> None:
        channel = _text(message["channel"])
        try:
            body = json.loads(message["data"])
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        if channel.startswith(REGISTRATION_PREFIX):
            if body.get("client_id") != channel.removeprefix(REGISTRATION_PREFIX):
                self.misaddressed.add(body, channel)  # v2: a collector uses its own topic only
            else:
                await self._on_registration(body, channel)
        elif channel.startswith("control.health.status."):
            self.statuses[channel.removeprefix("control.health.status.")].add(body, channel)
        elif channel.startswith("control.health.heartbeat."):
            self.heartbeats[channel.removeprefix("control.health.heartbeat.")].add(body, channel)
        elif channel == f"control.rpc.response.{self.client_id}":
            self.responses.add(body, channel)
            waiter = self._waiting.get(str(body.get("request_id")))
            if waiter is not None and not waiter.done():
                waiter.set_result(body)

    async def _on_registration(self, request: dict[str, Any], channel: str) -> None:
        operation = request.get("operation")
        if operation == "Register":
            self.registers.add(request, channel)
            mode = self.register_script.pop(0) if self.register_script else self.register_mode
            if mode == "ignore":
                return
            payload = {
                "status": "Accepted" if mode == "accept" else "Rejected",
                "message": None if mode == "accept" else "rejected by the test agent",
                "heartbeat_interval_ms": self.heartbeat_interval_ms,
            }
            await self._answer(request, payload)
        elif operation == "Deregister":
            self.deregisters.add(request, channel)
            if self.answer_deregister:
                await self._answer(request, {"status": "Accepted"})

    async def _answer(self, request: dict[str, Any], payload: dict[str, Any]) -> None:
        response = {
            "request_id": request["request_id"],
            "correlation_id": request.get("correlation_id") or request["request_id"],
            "operation": request["operation"],
            "service_id": self.client_id,
            "status": "Success",
            "payload": payload,
            "error": None,
            "state": "ready",
            "timestamp": rfc3339(datetime.now(UTC)),
            "queue_time_ms": 0,
            "execution_time_ms": 0,
            "total_time_ms": 0,
        }
        await self.redis.publish(
            f"control.rpc.response.{request['client_id']}", json.dumps(response)
        )

    # -- waiting on what procmond says ----------------------------------------

    def states(self, collector_id: str) -> list[str]:
        """The announced states of a collector, in order."""
        return [r.message["state"] for r in self.statuses[collector_id].items]

    async def wait_for_state(
        self, collector_id: str, state: str, *, count: int = 1, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The ``count``-th announcement of ``state``."""

        def matches(items: list[Received]) -> list[Received]:
            return [r for r in items if r.message.get("state") == state]

        await self.statuses[collector_id].wait(lambda i: len(matches(i)) >= count, timeout)
        return matches(self.statuses[collector_id].items)[count - 1].message

    async def wait_for_heartbeats(
        self,
        collector_id: str,
        count: int,
        *,
        timeout: float = 10.0,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> list[Received]:
        """At least ``count`` heartbeats satisfying ``where``; returns all received."""
        log = self.heartbeats[collector_id]
        await log.wait(lambda items: sum(1 for r in items if where(r.message)) >= count, timeout)
        return list(log.items)

    async def wait_for_registers(self, count: int, *, timeout: float = 10.0) -> list[Received]:
        """At least ``count`` Register requests received."""
        await self.registers.wait(lambda items: len(items) >= count, timeout)
        return list(self.registers.items)

    async def wait_for_deregister(self, *, timeout: float = 10.0) -> dict[str, Any]:
        """The first Deregister request."""
        await self.deregisters.wait(lambda items: len(items) >= 1, timeout)
        return self.deregisters.items[0].message

    # -- RPC to a collector ---------------------------------------------------

    async def call(
        self,
        collector_id: str,
        operation: str,
        payload: Any = None,
        *,
        timeout: float = 10.0,
        deadline: datetime | None = None,
        request_id: str | None = None,
        extra: dict[str, Any] | None = None,
        drop: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Send one request and return the parsed response (TimeoutError if none)."""
        request = envelope(
            operation,
            payload,
            client_id=self.client_id,
            target=f"control.collector.{collector_id}",
            request_id=request_id,
            deadline=deadline,
            timeout=timeout,
        )
        request.update(extra or {})
        for key in drop:
            request.pop(key, None)
        return await self.call_raw(
            collector_id, json.dumps(request).encode(), request["request_id"]
        )

    async def call_raw(
        self, collector_id: str, data: bytes, request_id: str, *, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Publish raw bytes and await the response carrying ``request_id``.

        A request that reached no subscriber is lost (pub/sub keeps nothing):
        that raises :class:`NotListeningError` at once instead of waiting out the
        timeout, as the protocol's clients do.
        """
        async with asyncio.timeout(timeout):
            await self.subscribed.wait()  # the reply topic is subscribed before we publish
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            if await self.publish_raw(collector_id, data) == 0:
                raise NotListeningError(f"nobody subscribed to control.collector.{collector_id}")
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop(request_id, None)

    async def wait_listening(self, collector_id: str, *, timeout: float = 10.0) -> None:
        """Readiness: wait until the collector is subscribed to its request topic."""
        topic = f"control.collector.{collector_id}"
        async with asyncio.timeout(timeout):
            while True:  # Redis announces no subscription: ask until it is there
                if (await self.redis.pubsub_numsub(topic))[0][1] > 0:
                    return
                await asyncio.sleep(0.02)

    async def publish_raw(self, collector_id: str, data: bytes) -> int:
        """Publish bytes on the collector's request topic; returns the receiver count."""
        return int(await self.redis.publish(f"control.collector.{collector_id}", data))

    async def responses_for(self, request_id: str, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` responses for ``request_id`` arrived."""
        await self.responses.wait(
            lambda items: (
                sum(1 for r in items if r.message.get("request_id") == request_id) >= count
            ),
            timeout,
        )

    # -- event streams ------------------------------------------------------------

    async def read_events(self, collector_id: str) -> list[dict[str, Any]]:
        """Every entry of the event streams for ``collector_id``: fields plus ``stream``."""
        entries: list[dict[str, Any]] = []
        # One MULTI for all the streams: read one after another, a collector
        # still publishing could add a later seq to the last stream read while
        # an earlier one looked complete, which would read as a gap.
        snapshot = self.redis.pipeline(transaction=True)
        for stream in STREAMS:
            snapshot.xrange(stream)
        ranges = await snapshot.execute()
        for stream, items in zip(STREAMS, ranges, strict=True):
            for _entry_id, fields in items or []:
                if fields is None:
                    continue
                decoded = {_text(k): _text(v) for k, v in fields.items()}
                if decoded.get("collector_id") != collector_id:
                    continue
                event = json.loads(decoded["event"])
                entries.append(
                    {
                        "stream": stream,
                        "seq": int(decoded["seq"]),
                        "boot_id": decoded["boot_id"],
                        "event": event,
                    }
                )
        return entries


@dataclass(frozen=True)
class SeqReport:
    """Contiguity of ``seq`` for one collector."""

    first: int
    last: int
    distinct: int
    duplicates: int
    missing: list[int]

    @property
    def lost(self) -> int:
        """Events lost: numbers missing between 1 and the highest seen."""
        return len(self.missing)


def seq_report(entries: list[dict[str, Any]]) -> SeqReport:
    """Check that ``seq`` runs 1..max with no gap (duplicates are allowed: at least once)."""
    seqs = [entry["seq"] for entry in entries]
    for entry in entries:
        assert entry["event"]["seq"] == entry["seq"], entry
    distinct = set(seqs)
    last = max(distinct, default=0)
    missing = sorted(set(range(1, last + 1)) - distinct)
    return SeqReport(
        first=min(distinct, default=0),
        last=last,
        distinct=len(distinct),
        duplicates=len(seqs) - len(distinct),
        missing=missing,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
