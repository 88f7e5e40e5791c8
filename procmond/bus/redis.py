"""The message bus: Redis pub/sub for the control plane, Redis Streams for events.

Theory of operation
-------------------
The daemon talks to a :class:`Bus` (declared, with the errors and the status,
in :mod:`procmond.bus.types`). :class:`RedisBus` is the real one; with
``embedded.py`` it is the only module that imports redis.
:class:`procmond.memory_bus.MemoryBus` is an in-memory fake with the same
behaviour for the unit tests of the daemon's parts.

``RedisBus`` keeps two connection pools. Commands (PUBLISH, the XADD pipeline,
XREAD) use a blocking pool of ``COMMAND_CONNECTIONS`` connections with
redis-py's own retry passed explicitly (a pool built from a URL gets none
unless ``retry=`` is given), bounded by ``command_timeout``; under a burst a
command waits for a free connection instead of failing. Pub/sub is one
connection owned by a supervisor task that does its own reconnecting: it opens
a fresh ``PubSub``, subscribes every registered channel and pattern, waits for
the server's confirmations and a PING round trip, and only then reports
``Connected``. redis-py's built-in re-subscribe is deliberately not used (the
pub/sub pool has no retry), because a retry inside redis-py hides an outage
from us and we must report it; so "restored after every reconnect" is our own
code and is tested. While connected, a liveness loop sends PING every
``liveness_interval``; when nothing at all came back from the server for
``liveness_timeout`` the connection is declared lost. redis-py's
``health_check_interval`` does not notice a frozen (SIGSTOPped) server: it
sends PING without waiting for the PONG.

Status: ``Disconnected`` at first, ``Connected`` on the first success; on loss
``Connected -> Disconnected``, then ``Reconnecting`` from the next attempt on
until one succeeds (failed attempts do not flicker the status), then
``Connected``. ``close()`` ends in ``Disconnected``. Listeners hear every change.

Invariant: whenever the status is ``Connected``, every subscription registered
before that moment has been confirmed by the server. ``subscribe()`` while
connected returns after the confirmation; while not connected it only
registers, and the subscription is confirmed before the next ``Connected``.
Messages that arrive during the handshake (a channel confirmed, the PING not
yet answered) are held and handed over, in order, right after ``Connected`` is
reported, so a handler never sees a message while the bus still says it is
not connected.

Exception hierarchy::

    BusError            base of everything the bus raises
    +-- BusUnavailable  not connected, or the server is down or silent: the
    |                   world's fault; retry later (the bus reconnects itself)
    +-- BusRefused      the server answered with an error (ACL NOPERM,
    |                   WRONGTYPE, OOM): retrying unchanged may fail again
    +-- BusClosed       the bus was used after close(): the caller's bug
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import RedisError, ResponseError

from procmond.bus.types import (
    Bus,
    BusClosed,
    BusError,
    BusRefused,
    BusUnavailable,
    ConnectionStatus,
    MessageHandler,
    PatternHandler,
    StatusListener,
    _StatusMixin,
    _text,
)

__all__ = [
    "Bus",
    "BusClosed",
    "BusError",
    "BusRefused",
    "BusUnavailable",
    "ConnectionStatus",
    "MessageHandler",
    "PatternHandler",
    "RedisBus",
    "StatusListener",
]

# Command retries inside redis-py: a few quick ones ride out a restart of the
# server without surfacing an error; the outer deadline bounds the total.
COMMAND_RETRIES: Final = 3
COMMAND_BACKOFF: Final = ExponentialBackoff(cap=0.5, base=0.05)
# Connections the command pool opens at most; more concurrent commands wait
# (bounded by command_timeout). Enough to keep a pipeline, heartbeats and a
# burst of answers moving without flooding the server with connections.
COMMAND_CONNECTIONS: Final = 16
# Reconnect backoff of the pub/sub supervisor: first retry after ~0.1 s, then
# doubling with full jitter up to reconnect_max_delay.
RECONNECT_BASE: Final = 0.05
# Messages held during a handshake (one PING round trip, at most
# liveness_timeout). Beyond this a flood is dispatched as it comes, so memory
# stays bounded; the RPC service has its own bounds after that.
MAX_HELD_MESSAGES: Final = 10_000


class _ConnectionLostError(Exception):
    """Internal: the pub/sub session ended."""


async def _first_of(
    aw: asyncio.Future[Any], lost: asyncio.Future[BaseException], stop: asyncio.Future[None]
) -> None:
    """Wait for ``aw`` unless the connection is lost or the bus is stopping first."""
    futures: set[asyncio.Future[Any]] = {aw, lost, stop}
    await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    if not aw.done():
        aw.cancel()
        if lost.done():
            raise _ConnectionLostError("connection lost") from lost.result()
        raise _ConnectionLostError("bus closing")


async def _cancel_and_wait(task: asyncio.Task[Any], attempts: int = 50) -> None:
    """Cancel ``task`` and wait for it to end.

    Python 3.11's ``asyncio.wait_for`` (which redis-py uses for socket writes)
    swallows a cancellation that arrives as the inner write completes; measured
    here as a supervisor that kept running after ``cancel()``. So cancel again
    until the task is really gone, a bounded number of times.
    """
    for _ in range(attempts):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


class RedisBus(_StatusMixin):
    """The bus over a real Redis: pub/sub with liveness checks, streams by pipeline."""

    def __init__(
        self,
        url: str,
        *,
        liveness_interval: float = 1.0,
        liveness_timeout: float = 3.0,
        name: str = "procmond",
        command_timeout: float | None = None,
        reconnect_max_delay: float = 2.0,
    ) -> None:
        if not 0 < liveness_interval < liveness_timeout:
            raise ValueError("need 0 < liveness_interval < liveness_timeout")
        self._url = url
        self._interval = liveness_interval
        self._timeout = liveness_timeout
        self._name = name
        self._command_timeout = liveness_timeout if command_timeout is None else command_timeout
        self._reconnect_max_delay = reconnect_max_delay
        self._init_status()
        self._channels: dict[str, MessageHandler] = {}
        self._patterns: dict[str, PatternHandler] = {}
        self._client: Redis | None = None
        self._sub_client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._lost: asyncio.Future[BaseException] | None = None
        self._waiters: dict[tuple[str, str], list[asyncio.Future[None]]] = {}
        #: Messages received during the handshake, dispatched once Connected.
        self._held: list[dict[str, Any]] | None = None
        self._last_rx = 0.0
        self._had_session = False
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Future[None] | None = None
        self._closed = False

    def _make_client(self, suffix: str, retry: Retry) -> Redis:
        # A blocking pool: under a burst (hundreds of RPC answers at once) a
        # command waits for a free connection instead of redis-py refusing it
        # with "Too many connections", which would lose the answer.
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=COMMAND_CONNECTIONS,
            timeout=self._command_timeout,
            retry=retry,
            socket_timeout=self._command_timeout,
            socket_connect_timeout=self._command_timeout,
            client_name=f"{self._name}{suffix}",
            decode_responses=False,
        )
        return Redis(connection_pool=pool)

    async def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        self._check_open()
        if self._task is not None:
            return
        self._client = self._make_client("", Retry(COMMAND_BACKOFF, COMMAND_RETRIES))
        # No retry at all (not even the one reconnect redis-py makes before
        # giving up): the supervisor below must see every failure.
        self._sub_client = self._make_client("-sub", Retry(NoBackoff(), 0, supported_errors=()))
        self._stop = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._supervise(self._stop), name=f"{self._name}-bus")

    async def close(self) -> None:
        """Stop reconnecting, close the connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=self._timeout)
            await _cancel_and_wait(self._task)
        self._set_status(ConnectionStatus.DISCONNECTED)
        self._release_waiters()
        for client in (self._client, self._sub_client):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise BusClosed("the bus is closed")

    # -- pub/sub session --------------------------------------------------

    async def _supervise(self, stop: asyncio.Future[None]) -> None:
        backoff = ExponentialWithJitterBackoff(cap=self._reconnect_max_delay, base=RECONNECT_BASE)
        failures = 0
        while not stop.done():
            if failures:
                self._set_status(ConnectionStatus.RECONNECTING)
            try:
                await self._session(stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not stop.done():
                    self._log(
                        logging.WARNING,
                        "lost",
                        "redis pub/sub connection: %s",
                        str(exc) or repr(exc),
                    )
            failures = 1 if self._had_session else failures + 1
            await asyncio.wait({stop}, timeout=backoff.compute(failures))

    async def _session(self, stop: asyncio.Future[None]) -> None:
        assert self._sub_client is not None
        self._had_session = False
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[BaseException] = loop.create_future()
        self._lost = lost
        pubsub = self._sub_client.pubsub()
        reader: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(self._timeout):
                # redis-py leaves PubSub.connect/aclose unannotated.
                await pubsub.connect()  # type: ignore[no-untyped-call]
            self._pubsub = pubsub
            self._last_rx = loop.time()
            self._held = []
            reader = asyncio.create_task(self._read(pubsub, lost), name=f"{self._name}-bus-reader")
            async with asyncio.timeout(self._timeout):
                await self._handshake(pubsub, lost, stop)
            self._had_session = True
            # The rate limit is for a server that stays down (one line per reconnect
            # attempt); the first loss after a success is news and is always logged.
            self._log.reset("lost")
            self._set_status(ConnectionStatus.CONNECTED)
            self._release_held()
            await self._watch(pubsub, lost, stop)
        finally:
            self._pubsub = None
            self._lost = None
            if self._status is ConnectionStatus.CONNECTED:
                self._set_status(ConnectionStatus.DISCONNECTED)
            self._release_held()  # a handshake that failed: they were received all the same
            self._release_waiters()
            if reader is not None:
                await _cancel_and_wait(reader)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _handshake(
        self, pubsub: PubSub, lost: asyncio.Future[BaseException], stop: asyncio.Future[None]
    ) -> None:
        """Subscribe everything registered (also what is added meanwhile), then one PING."""
        done_c: set[str] = set()
        done_p: set[str] = set()
        while True:
            todo_c = [c for c in self._channels if c not in done_c]
            todo_p = [p for p in self._patterns if p not in done_p]
            waits = [self._waiter("subscribe", c) for c in todo_c]
            waits += [self._waiter("psubscribe", p) for p in todo_p]
            waits.append(self._waiter("pong", ""))
            if todo_c:
                await pubsub.subscribe(*todo_c)
            if todo_p:
                await pubsub.psubscribe(*todo_p)
            await pubsub.ping()
            await _first_of(asyncio.gather(*waits), lost, stop)
            done_c.update(todo_c)
            done_p.update(todo_p)
            if set(self._channels) <= done_c and set(self._patterns) <= done_p:
                return

    async def _read(self, pubsub: PubSub, lost: asyncio.Future[BaseException]) -> None:
        """Read and dispatch until the connection fails; the error ends the session."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                self._last_rx = loop.time()
                if message is not None:
                    self._dispatch(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not lost.done():
                lost.set_result(exc)

    def _release_held(self) -> None:
        held, self._held = self._held, None
        for message in held or ():
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = _text(message["type"])
        held = self._held
        if kind in ("message", "pmessage") and held is not None and len(held) < MAX_HELD_MESSAGES:
            held.append(message)
            return
        if kind == "message":
            channel = _text(message["channel"])
            handler = self._channels.get(channel)
            if handler is not None:
                self._call_handler(handler, channel, message["data"])
        elif kind == "pmessage":
            pattern = _text(message["pattern"])
            pattern_handler = self._patterns.get(pattern)
            if pattern_handler is not None:
                channel = _text(message["channel"])
                self._call_handler(pattern_handler, pattern, channel, message["data"])
        elif kind in ("subscribe", "psubscribe"):
            self._resolve((kind, _text(message["channel"])))
        elif kind == "pong":
            self._resolve(("pong", ""))

    async def _watch(
        self, pubsub: PubSub, lost: asyncio.Future[BaseException], stop: asyncio.Future[None]
    ) -> None:
        """PING every interval; silence for liveness_timeout means the server is gone."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time()
        while not stop.done():
            now = loop.time()
            silent = now - self._last_rx
            if silent > self._timeout:
                raise _ConnectionLostError(f"no reply from redis for {silent:.1f} s")
            if now >= next_ping:
                async with asyncio.timeout(self._timeout):
                    await pubsub.ping()
                next_ping = now + self._interval
            wake = min(next_ping, self._last_rx + self._timeout + 0.001) - loop.time()
            either: set[asyncio.Future[Any]] = {lost, stop}
            await asyncio.wait(either, timeout=max(wake, 0.0), return_when="FIRST_COMPLETED")
            if lost.done():
                raise _ConnectionLostError("connection lost") from lost.result()

    def _waiter(self, kind: str, name: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((kind, name), []).append(future)
        return future

    def _resolve(self, key: tuple[str, str]) -> None:
        for future in self._waiters.pop(key, []):
            if not future.done():
                future.set_result(None)

    def _release_waiters(self) -> None:
        """On loss or close: let subscribe() return; restoring is the next session's job."""
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)

    def _connection_failed(self, exc: BaseException) -> None:
        """A command on the pub/sub connection failed: end the session now."""
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(exc)
        if self._status is ConnectionStatus.CONNECTED:
            self._set_status(ConnectionStatus.DISCONNECTED)

    async def _confirmed(self, kind: str, name: str, send: Callable[[PubSub], Any]) -> None:
        pubsub = self._pubsub
        if pubsub is None or self._status is not ConnectionStatus.CONNECTED:
            return  # registered; the next handshake confirms it before Connected
        waiter = self._waiter(kind, name)
        try:
            async with asyncio.timeout(self._timeout):
                await send(pubsub)
                await waiter
        except (TimeoutError, RedisError, OSError) as exc:
            self._connection_failed(exc)

    # -- public operations ------------------------------------------------

    async def subscribe(self, channel: str, handler: MessageHandler) -> None:
        """Register ``handler``; when connected, return after the server confirmed."""
        self._check_open()
        self._channels[channel] = handler
        await self._confirmed("subscribe", channel, lambda p: p.subscribe(channel))

    async def psubscribe(self, pattern: str, handler: PatternHandler) -> None:
        """Register a glob pattern handler (pattern, channel, data)."""
        self._check_open()
        self._patterns[pattern] = handler
        await self._confirmed("psubscribe", pattern, lambda p: p.psubscribe(pattern))

    async def unsubscribe(self, channel: str) -> None:
        """Forget the channel; its handler is not called after this returns."""
        self._check_open()
        if self._channels.pop(channel, None) is None:
            return
        pubsub = self._pubsub
        if pubsub is not None and self._status is ConnectionStatus.CONNECTED:
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.unsubscribe(channel)
            except (TimeoutError, RedisError, OSError) as exc:
                self._connection_failed(exc)

    def _command_client(self) -> Redis:
        self._check_open()
        if self._client is None or self._status is not ConnectionStatus.CONNECTED:
            raise BusUnavailable(f"redis is not connected (status {self._status.value})")
        return self._client

    async def publish(self, channel: str, data: bytes) -> int:
        """PUBLISH; returns the number of receivers (0 = nobody listening)."""
        client = self._command_client()
        try:
            async with asyncio.timeout(self._command_timeout):
                return int(await client.publish(channel, data))
        except TimeoutError as exc:
            raise BusUnavailable(f"PUBLISH {channel}: no answer in time") from exc
        except ResponseError as exc:
            raise BusRefused(f"PUBLISH {channel}: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"PUBLISH {channel}: {exc}") from exc

    async def xadd_many(
        self, entries: Sequence[tuple[str, Mapping[str, str | bytes]]], *, maxlen: int | None
    ) -> list[str]:
        """XADD every entry in one pipeline (MAXLEN ~); ids in order; any failure raises."""
        client = self._command_client()
        if not entries:
            return []
        pipe = client.pipeline(transaction=False)
        for key, fields in entries:
            encoded: dict[Any, Any] = dict(fields)  # redis-py's field types are invariant
            pipe.xadd(key, encoded, maxlen=maxlen, approximate=True)
        try:
            async with asyncio.timeout(self._command_timeout):
                results = await pipe.execute(raise_on_error=False)
        except TimeoutError as exc:
            raise BusUnavailable("XADD pipeline: no answer in time") from exc
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"XADD pipeline: {exc}") from exc
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            error = BusRefused if isinstance(failed[0], ResponseError) else BusUnavailable
            raise error(f"XADD pipeline: {len(failed)} of {len(results)} failed: {failed[0]}")
        return [_text(r) for r in results]

    # -- in-memory fake ---------------------------------------------------------

    async def xread(
        self, streams: Mapping[str, str], *, block_ms: int, count: int
    ) -> list[tuple[str, str, dict[str, str]]]:
        """XREAD BLOCK: entries after the given ids, oldest first, as (stream, id, fields)."""
        client = self._command_client()
        try:
            async with asyncio.timeout(block_ms / 1000 + self._command_timeout):
                # redis-py's stream types are looser than its hints.
                wanted: dict[Any, Any] = dict(streams)
                reply: Any = await client.xread(wanted, count=count, block=block_ms)
        except TimeoutError as exc:
            raise BusUnavailable("XREAD: no answer in time") from exc
        except ResponseError as exc:
            raise BusRefused(f"XREAD: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"XREAD: {exc}") from exc
        entries = []
        for key, items in reply or []:
            for entry_id, fields in items:
                entries.append(
                    (_text(key), _text(entry_id), {_text(k): _text(v) for k, v in fields.items()})
                )
        return entries

    async def channel_subscribers(self, channel: str) -> int:
        """PUBSUB NUMSUB: subscribers of exactly ``channel`` (pattern subscribers excluded)."""
        client = self._command_client()
        try:
            async with asyncio.timeout(self._command_timeout):
                counts: Any = await client.pubsub_numsub(channel)
        except TimeoutError as exc:
            raise BusUnavailable("PUBSUB NUMSUB: no answer in time") from exc
        except ResponseError as exc:
            raise BusRefused(f"PUBSUB NUMSUB: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"PUBSUB NUMSUB: {exc}") from exc
        return int(counts[0][1]) if counts else 0

    async def stream_tail_id(self, key: str) -> str:
        """The id of the stream's newest entry, or ``0-0`` when it is empty or missing."""
        client = self._command_client()
        try:
            async with asyncio.timeout(self._command_timeout):
                newest: Any = await client.xrevrange(key, count=1)
        except TimeoutError as exc:
            raise BusUnavailable(f"XREVRANGE {key}: no answer in time") from exc
        except ResponseError as exc:
            raise BusRefused(f"XREVRANGE {key}: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"XREVRANGE {key}: {exc}") from exc
        return _text(newest[0][0]) if newest else "0-0"
