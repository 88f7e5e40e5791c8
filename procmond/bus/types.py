"""The bus contract: what every bus offers the daemon, and what it raises.

:class:`Bus` is the protocol the daemon's parts are written against;
:class:`procmond.bus.RedisBus` is the real one, and
:class:`procmond.memory_bus.MemoryBus` the in-memory fake of the unit tests.
The status semantics and the exception hierarchy are described in
:mod:`procmond.bus.redis`. This module imports no redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Protocol

from procmond.logs import RateLimitedLog
from procmond.protocol import ConnectionStatus

__all__ = [
    "Bus",
    "BusClosed",
    "BusError",
    "BusRefused",
    "BusUnavailable",
    "ConnectionStatus",
    "MessageHandler",
    "PatternHandler",
    "StatusListener",
    "StatusMixin",
    "decode_text",
    "stream_id_tuple",
]

logger = logging.getLogger("procmond.bus")

# The same warning at most once per this many seconds (a dead server would
# otherwise log on every reconnect attempt).
LOG_INTERVAL_SECS: Final = 10.0


class BusError(Exception):
    """Base of the errors the bus raises."""


# The names without an Error suffix were fixed by the daemon's interface.
class BusUnavailable(BusError):  # noqa: N818
    """Not connected, or the command failed because the server is down or silent."""


class BusRefused(BusError):  # noqa: N818
    """The server refused the command with an error reply."""


class BusClosed(BusError):  # noqa: N818
    """The bus was used after close()."""


MessageHandler = Callable[[str, bytes], None]
"""(channel, data); called on the event loop; must not block."""
PatternHandler = Callable[[str, str, bytes], None]
"""(pattern, channel, data); called on the event loop; must not block."""
StatusListener = Callable[[ConnectionStatus], None]


class Bus(Protocol):
    """What the daemon uses; RedisBus and MemoryBus satisfy it."""

    @property
    def status(self) -> ConnectionStatus: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def subscribe(self, channel: str, handler: MessageHandler) -> None: ...
    async def psubscribe(self, pattern: str, handler: PatternHandler) -> None: ...
    async def unsubscribe(self, channel: str) -> None: ...
    async def publish(self, channel: str, data: bytes) -> int: ...
    async def xadd_many(
        self, entries: Sequence[tuple[str, Mapping[str, str | bytes]]], *, maxlen: int | None
    ) -> list[str]: ...
    async def xread(
        self, streams: Mapping[str, str], *, block_ms: int, count: int
    ) -> list[tuple[str, str, dict[str, str]]]: ...
    async def stream_tail_id(self, key: str) -> str: ...
    async def channel_subscribers(self, channel: str) -> int: ...
    async def wait_connected(self, timeout: float) -> bool: ...
    def add_status_listener(self, listener: StatusListener) -> None: ...


class StatusMixin:
    """Status, listeners and the Connected event, shared by both buses."""

    def _init_status(self) -> None:
        self._status = ConnectionStatus.DISCONNECTED
        self._listeners: list[StatusListener] = []
        self._connected = asyncio.Event()
        self._log = RateLimitedLog(logger, LOG_INTERVAL_SECS)

    @property
    def status(self) -> ConnectionStatus:
        return self._status

    def add_status_listener(self, listener: StatusListener) -> None:
        self._listeners.append(listener)

    def _set_status(self, status: ConnectionStatus) -> None:
        if status is self._status:
            return
        self._status = status
        if status is ConnectionStatus.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception as exc:
                self._log(logging.ERROR, "listener", "status listener %r failed", listener, exc=exc)

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for Connected; True if it is."""
        if self._status is ConnectionStatus.CONNECTED:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    def _call_handler(self, handler: Callable[..., None], *args: object) -> None:
        try:
            handler(*args)
        except Exception as exc:
            self._log(logging.ERROR, "handler", "message handler %r failed", handler, exc=exc)


def decode_text(value: bytes | str) -> str:
    """A reply's bytes as text; undecodable bytes survive as surrogates."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def stream_id_tuple(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``millis-seq``) as a tuple that orders like Redis does."""
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)
