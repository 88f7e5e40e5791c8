"""An in-memory :class:`~procmond.bus_types.Bus`: the fake transport of the unit tests.

:class:`MemoryBroker` is the shared "server"; each :class:`MemoryBus` on it
behaves like a :class:`procmond.bus.RedisBus` (status, listeners,
subscriptions restored after an outage, pub/sub at most once, streams) with
fault injection instead of a network.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections.abc import Mapping, Sequence

from procmond.bus.types import (
    BusClosed,
    BusUnavailable,
    ConnectionStatus,
    MessageHandler,
    PatternHandler,
    StatusMixin,
    decode_text,
    stream_id_tuple,
)

__all__ = ["MemoryBroker", "MemoryBus"]


class MemoryBroker:
    """The shared "server" of MemoryBus instances: pub/sub fan-out and streams.

    Deterministic: messages are delivered with ``loop.call_soon`` in publish
    order, no threads, no clocks. Patterns use ``fnmatch`` globbing, close to
    Redis's. Stream ids are ``"<n>-0"`` with n counting from 1 per stream;
    MAXLEN trimming is exact (a valid outcome of Redis's approximate trim).
    """

    def __init__(self) -> None:
        self.down = False
        self.published: list[tuple[str, bytes]] = []
        self._buses: list[MemoryBus] = []
        self._streams: dict[str, list[tuple[str, dict[str, str | bytes]]]] = {}
        self._appended = asyncio.Event()  # replaced after each XADD; wakes XREAD
        self._counters: dict[str, int] = {}
        self._fail_xadd = 0

    def set_down(self, down: bool) -> None:
        """Take the whole "server" down (every bus Disconnected) or bring it back."""
        self.down = down
        for bus in list(self._buses):
            bus._refresh()

    def fail_next_xadd(self, count: int = 1) -> None:
        """Make the next ``count`` xadd_many calls raise BusUnavailable (status unchanged)."""
        self._fail_xadd += count

    def stream(self, key: str) -> list[tuple[str, dict[str, str | bytes]]]:
        """A copy of the stream's entries, oldest first; fields as they were passed."""
        return [(entry_id, dict(fields)) for entry_id, fields in self._streams.get(key, [])]

    def _entries_after(
        self, streams: Mapping[str, str], count: int
    ) -> list[tuple[str, str, dict[str, str]]]:
        found = []
        for key, after in streams.items():
            floor = stream_id_tuple(after)
            taken = 0
            for entry_id, fields in self._streams.get(key, []):
                if stream_id_tuple(entry_id) > floor and taken < count:
                    found.append((key, entry_id, {k: decode_text(v) for k, v in fields.items()}))
                    taken += 1
        return found

    def _tail_id(self, key: str) -> str:
        stream = self._streams.get(key)
        return stream[-1][0] if stream else "0-0"

    def _publish(self, channel: str, data: bytes) -> int:
        self.published.append((channel, data))
        return sum(bus._deliver(channel, data) for bus in list(self._buses))

    def _xadd_many(
        self, entries: Sequence[tuple[str, Mapping[str, str | bytes]]], maxlen: int | None
    ) -> list[str]:
        if self._fail_xadd:
            self._fail_xadd -= 1
            raise BusUnavailable("injected XADD failure")
        ids = []
        for key, fields in entries:
            n = self._counters.get(key, 0) + 1
            self._counters[key] = n
            stream = self._streams.setdefault(key, [])
            # Redis keeps bytes and strings alike; xread gives text back.
            stream.append((f"{n}-0", {k: decode_text(v) for k, v in fields.items()}))
            if maxlen is not None and len(stream) > maxlen:
                del stream[: len(stream) - maxlen]
            ids.append(f"{n}-0")
        self._appended.set()
        self._appended = asyncio.Event()
        return ids


class MemoryBus(StatusMixin):
    """A Bus on a MemoryBroker, with per-bus fault injection (``set_down``)."""

    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker
        self._init_status()
        self._channels: dict[str, MessageHandler] = {}
        self._patterns: dict[str, PatternHandler] = {}
        self._down = False
        self._started = False
        self._closed = False
        self._epoch = 0  # bumped on every loss: messages in flight are dropped
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def _up(self) -> bool:
        return self._started and not self._closed and not self._down and not self._broker.down

    def set_down(self, down: bool) -> None:
        """Cut this bus alone off the broker (True) or reconnect it (False)."""
        self._down = down
        self._refresh()

    def _refresh(self) -> None:
        if self._closed or not self._started:
            return
        if self._up:
            self._set_status(ConnectionStatus.CONNECTED)
        elif self._status is not ConnectionStatus.RECONNECTING:
            self._epoch += 1
            self._set_status(ConnectionStatus.DISCONNECTED)
            assert self._loop is not None
            self._loop.call_soon(self._begin_reconnecting)

    def _begin_reconnecting(self) -> None:
        if self._started and not self._closed and not self._up:
            self._set_status(ConnectionStatus.RECONNECTING)

    async def start(self) -> None:
        self._check_open()
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._broker._buses.append(self)
        self._refresh()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._epoch += 1
        if self in self._broker._buses:
            self._broker._buses.remove(self)
        self._set_status(ConnectionStatus.DISCONNECTED)

    def _check_open(self) -> None:
        if self._closed:
            raise BusClosed("the bus is closed")

    def _check_up(self) -> None:
        self._check_open()
        if not self._up:
            raise BusUnavailable(f"memory bus is not connected (status {self._status.value})")

    async def subscribe(self, channel: str, handler: MessageHandler) -> None:
        self._check_open()
        self._channels[channel] = handler

    async def psubscribe(self, pattern: str, handler: PatternHandler) -> None:
        self._check_open()
        self._patterns[pattern] = handler

    def subscribed(self, channel: str) -> bool:
        """Whether this bus holds a subscription to ``channel`` (up or not): a test's view."""
        return channel in self._channels

    async def unsubscribe(self, channel: str) -> None:
        self._check_open()
        self._channels.pop(channel, None)

    async def publish(self, channel: str, data: bytes) -> int:
        self._check_up()
        return self._broker._publish(channel, bytes(data))

    async def xadd_many(
        self, entries: Sequence[tuple[str, Mapping[str, str | bytes]]], *, maxlen: int | None
    ) -> list[str]:
        self._check_up()
        return self._broker._xadd_many(entries, maxlen)

    async def xread(
        self, streams: Mapping[str, str], *, block_ms: int, count: int
    ) -> list[tuple[str, str, dict[str, str]]]:
        self._check_up()
        found = self._broker._entries_after(streams, count)
        if found or block_ms <= 0:
            return found
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(block_ms / 1000):
                await self._broker._appended.wait()
        self._check_up()
        return self._broker._entries_after(streams, count)

    async def stream_tail_id(self, key: str) -> str:
        self._check_up()
        return self._broker._tail_id(key)

    async def channel_subscribers(self, channel: str) -> int:
        self._check_up()
        return sum(channel in bus._channels for bus in self._broker._buses if bus._up)

    def _deliver(self, channel: str, data: bytes) -> int:
        """Schedule delivery to this bus; return how many subscriptions matched."""
        if not self._up:
            return 0
        assert self._loop is not None
        count = 0
        if channel in self._channels:
            count += 1
            self._loop.call_soon(self._on_message, self._epoch, channel, data)
        for pattern in self._patterns:
            if fnmatch.fnmatchcase(channel, pattern):
                count += 1
                self._loop.call_soon(self._on_pmessage, self._epoch, pattern, channel, data)
        return count

    def _on_message(self, epoch: int, channel: str, data: bytes) -> None:
        handler = self._channels.get(channel)
        if epoch == self._epoch and handler is not None:
            self._call_handler(handler, channel, data)

    def _on_pmessage(self, epoch: int, pattern: str, channel: str, data: bytes) -> None:
        handler = self._patterns.get(pattern)
        if epoch == self._epoch and handler is not None:
            self._call_handler(handler, pattern, channel, data)
