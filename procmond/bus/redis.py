"""The message bus: Redis pub/sub for the control plane, Redis Streams for events.

Theory of operation
-------------------
The daemon talks to a :class:`Bus` (declared, with the errors and the status,
in :mod:`procmond.bus.types`). :class:`RedisBus` is the real one; its
modules (this one, :mod:`procmond.bus.redis_pubsub` for the pub/sub connection
and the status, :mod:`procmond.bus.redis_commands` for the commands) and
``embedded.py`` are the only ones that import redis.
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

import contextlib
from collections.abc import Mapping, Sequence
from typing import Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from procmond.bus.redis_commands import RedisCommands
from procmond.bus.redis_pubsub import MAX_HELD_MESSAGES as MAX_HELD_MESSAGES
from procmond.bus.redis_pubsub import RECONNECT_BASE as RECONNECT_BASE
from procmond.bus.redis_pubsub import PubSubSupervisor
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


class RedisBus:
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
        self._name = name
        self._command_timeout = liveness_timeout if command_timeout is None else command_timeout
        self._pubsub = PubSubSupervisor(
            name=name,
            liveness_interval=liveness_interval,
            liveness_timeout=liveness_timeout,
            reconnect_max_delay=reconnect_max_delay,
        )
        self._commands: RedisCommands | None = None
        self._sub_client: Redis | None = None
        self._closed = False

    # -- status (the pub/sub connection's) ------------------------------------

    @property
    def status(self) -> ConnectionStatus:
        return self._pubsub.status

    def add_status_listener(self, listener: StatusListener) -> None:
        self._pubsub.add_status_listener(listener)

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for Connected; True if it is."""
        return await self._pubsub.wait_connected(timeout)

    # -- lifecycle ------------------------------------------------------------

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
        if self._commands is not None:
            return
        client = self._make_client("", Retry(COMMAND_BACKOFF, COMMAND_RETRIES))
        self._commands = RedisCommands(client, self._command_timeout)
        # No retry at all (not even the one reconnect redis-py makes before
        # giving up): the supervisor must see every failure.
        self._sub_client = self._make_client("-sub", Retry(NoBackoff(), 0, supported_errors=()))
        self._pubsub.start(self._sub_client)

    async def close(self) -> None:
        """Stop reconnecting, close the connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._pubsub.stop()
        client = None if self._commands is None else self._commands.client
        for each in (client, self._sub_client):
            if each is not None:
                with contextlib.suppress(Exception):
                    await each.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise BusClosed("the bus is closed")

    # -- public operations ------------------------------------------------------

    async def subscribe(self, channel: str, handler: MessageHandler) -> None:
        """Register ``handler``; when connected, return after the server confirmed."""
        self._check_open()
        await self._pubsub.subscribe(channel, handler)

    async def psubscribe(self, pattern: str, handler: PatternHandler) -> None:
        """Register a glob pattern handler (pattern, channel, data)."""
        self._check_open()
        await self._pubsub.psubscribe(pattern, handler)

    async def unsubscribe(self, channel: str) -> None:
        """Forget the channel; its handler is not called after this returns."""
        self._check_open()
        await self._pubsub.unsubscribe(channel)

    def _command_client(self) -> RedisCommands:
        self._check_open()
        status = self._pubsub.status
        if self._commands is None or status is not ConnectionStatus.CONNECTED:
            raise BusUnavailable(f"redis is not connected (status {status.value})")
        return self._commands

    async def publish(self, channel: str, data: bytes) -> int:
        """PUBLISH; returns the number of receivers (0 = nobody listening)."""
        return await self._command_client().publish(channel, data)

    async def xadd_many(
        self, entries: Sequence[tuple[str, Mapping[str, str | bytes]]], *, maxlen: int | None
    ) -> list[str]:
        """XADD every entry in one pipeline (MAXLEN ~); ids in order; any failure raises."""
        return await self._command_client().xadd_many(entries, maxlen=maxlen)

    async def xread(
        self, streams: Mapping[str, str], *, block_ms: int, count: int
    ) -> list[tuple[str, str, dict[str, str]]]:
        """XREAD BLOCK: entries after the given ids, oldest first, as (stream, id, fields)."""
        return await self._command_client().xread(streams, block_ms=block_ms, count=count)

    async def channel_subscribers(self, channel: str) -> int:
        """PUBSUB NUMSUB: subscribers of exactly ``channel`` (pattern subscribers excluded)."""
        return await self._command_client().channel_subscribers(channel)

    async def stream_tail_id(self, key: str) -> str:
        """The id of the stream's newest entry, or ``0-0`` when it is empty or missing."""
        return await self._command_client().stream_tail_id(key)
