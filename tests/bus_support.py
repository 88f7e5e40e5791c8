"""Helpers shared by the bus tests: an inbox to await messages on, a status log,
a connected RedisBus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from procmond.bus.redis import ConnectionStatus, RedisBus

C = ConnectionStatus
WAIT = 5.0  # generous bound for anything that should take milliseconds


class Inbox:
    """Collects (channel, data) or (pattern, channel, data) and lets a test await them."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def on_message(self, channel: str, data: bytes) -> None:
        self.items.append((channel, data))
        self._queue.put_nowait((channel, data))

    def on_pmessage(self, pattern: str, channel: str, data: bytes) -> None:
        self.items.append((pattern, channel, data))
        self._queue.put_nowait((pattern, channel, data))

    async def get(self, timeout: float = WAIT) -> tuple[Any, ...]:
        async with asyncio.timeout(timeout):
            return await self._queue.get()


class StatusLog:
    """Records status changes and signals when a given status is reached."""

    def __init__(self) -> None:
        self.seen: list[ConnectionStatus] = []
        self._events = {status: asyncio.Event() for status in ConnectionStatus}

    def __call__(self, status: ConnectionStatus) -> None:
        self.seen.append(status)
        self._events[status].set()

    async def reached(self, status: ConnectionStatus, timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            await self._events[status].wait()

    def reset(self) -> None:
        for event in self._events.values():
            event.clear()


@asynccontextmanager
async def connected(url: str, **kwargs: Any) -> AsyncIterator[RedisBus]:
    bus = RedisBus(url, **kwargs)
    await bus.start()
    try:
        assert await bus.wait_connected(WAIT)
        yield bus
    finally:
        await bus.close()
