"""The pub/sub side of the Redis bus: one supervised connection, its subscriptions and
the bus status.

:class:`PubSubSupervisor` is the part of :class:`procmond.bus.redis.RedisBus`
that keeps the pub/sub connection: a supervisor task opens a session, subscribes
everything registered, confirms it with a PING round trip, reports
``Connected``, watches liveness and reconnects with backoff. The status it
reports is the bus's status (the command side refuses while it is not
``Connected``). The theory of operation, the status semantics and the
subscription invariant are in :mod:`procmond.bus.redis`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

# StatusMixin and decode_text are private to procmond.bus.types but shared by both
# buses; RedisBus imported them the same way before it was split.
from procmond.bus.types import (
    ConnectionStatus,
    MessageHandler,
    PatternHandler,
    StatusMixin,
    decode_text,
)

__all__ = ["MAX_HELD_MESSAGES", "RECONNECT_BASE", "PubSubSupervisor"]

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


class PubSubSupervisor(StatusMixin):
    """The pub/sub connection, kept up by a supervisor task; owns the bus status."""

    def __init__(
        self,
        *,
        name: str,
        liveness_interval: float,
        liveness_timeout: float,
        reconnect_max_delay: float,
    ) -> None:
        self._name = name
        self._interval = liveness_interval
        self._timeout = liveness_timeout
        self._reconnect_max_delay = reconnect_max_delay
        self._init_status()
        self._channels: dict[str, MessageHandler] = {}
        self._patterns: dict[str, PatternHandler] = {}
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

    def start(self, client: Redis) -> None:
        """Begin connecting through ``client`` in a supervisor task; returns at once."""
        self._sub_client = client
        self._stop = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._supervise(self._stop), name=f"{self._name}-bus")

    async def stop(self) -> None:
        """Stop the supervisor, end in Disconnected and let every waiting subscribe() return."""
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=self._timeout)
            await _cancel_and_wait(self._task)
        self._set_status(ConnectionStatus.DISCONNECTED)
        self._release_waiters()

    # -- subscriptions ------------------------------------------------------

    async def subscribe(self, channel: str, handler: MessageHandler) -> None:
        """Register ``handler``; when connected, return after the server confirmed."""
        self._channels[channel] = handler
        await self._confirmed("subscribe", channel, lambda p: p.subscribe(channel))

    async def psubscribe(self, pattern: str, handler: PatternHandler) -> None:
        """Register a glob pattern handler (pattern, channel, data)."""
        self._patterns[pattern] = handler
        await self._confirmed("psubscribe", pattern, lambda p: p.psubscribe(pattern))

    async def unsubscribe(self, channel: str) -> None:
        """Forget the channel; its handler is not called after this returns."""
        if self._channels.pop(channel, None) is None:
            return
        pubsub = self._pubsub
        if pubsub is not None and self._status is ConnectionStatus.CONNECTED:
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.unsubscribe(channel)
            except (TimeoutError, RedisError, OSError) as exc:
                self._connection_failed(exc)

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

    def _connection_failed(self, exc: BaseException) -> None:
        """A command on the pub/sub connection failed: end the session now."""
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(exc)
        if self._status is ConnectionStatus.CONNECTED:
            self._set_status(ConnectionStatus.DISCONNECTED)

    # -- the session --------------------------------------------------------

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
        kind = decode_text(message["type"])
        held = self._held
        if kind in ("message", "pmessage") and held is not None and len(held) < MAX_HELD_MESSAGES:
            held.append(message)
            return
        if kind == "message":
            channel = decode_text(message["channel"])
            handler = self._channels.get(channel)
            if handler is not None:
                self._call_handler(handler, channel, message["data"])
        elif kind == "pmessage":
            pattern = decode_text(message["pattern"])
            pattern_handler = self._patterns.get(pattern)
            if pattern_handler is not None:
                channel = decode_text(message["channel"])
                self._call_handler(pattern_handler, pattern, channel, message["data"])
        elif kind in ("subscribe", "psubscribe"):
            self._resolve((kind, decode_text(message["channel"])))
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
