"""Readiness signals: counts a task can await instead of polling (STYLE 12).

Parts expose a :class:`Counter` for what others (tests first of all) wait
for: cycles finished, messages taken, states entered, heartbeats sent. A
waiter names the count it needs and a deadline, like trio's
``task_status.started()`` with ``fail_after`` around it: nobody polls a
private counter, nobody hangs.
"""

from __future__ import annotations

import asyncio

__all__ = ["Counter"]


class Counter:
    """A count that only grows, and that can be awaited."""

    def __init__(self) -> None:
        self.value = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def add(self, amount: int = 1) -> None:
        """Count ``amount`` more and wake every waiter whose count is reached."""
        self.value += amount
        still: list[tuple[int, asyncio.Future[None]]] = []
        for target, future in self._waiters:
            if self.value >= target:
                if not future.done():
                    future.set_result(None)
            elif not future.done():
                still.append((target, future))
        self._waiters = still

    async def reach(self, target: int, timeout: float = 10.0) -> int:
        """Wait until the count is at least ``target`` (TimeoutError after ``timeout`` s)."""
        if self.value >= target:
            return self.value
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        async with asyncio.timeout(timeout):
            await future
        return self.value

    async def next(self, timeout: float = 10.0) -> int:
        """Wait for one more than now."""
        return await self.reach(self.value + 1, timeout)
