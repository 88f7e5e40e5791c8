"""The command side of the Redis bus: PUBLISH, the XADD pipeline, XREAD and queries.

:class:`RedisCommands` runs each command of :class:`procmond.bus.redis.RedisBus`
on the command client, bounds it by the command deadline, and turns redis-py's
errors into the bus's: no answer in time or a broken connection is
:class:`BusUnavailable` (the world's fault, retry later), an error reply is
:class:`BusRefused`. Whether the bus may send at all (open, ``Connected``) is
for the bus to decide before it calls here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

# decode_text is private to procmond.bus.types but shared by both buses; RedisBus
# imported it the same way before it was split.
from procmond.bus.types import BusRefused, BusUnavailable, decode_text

__all__ = ["RedisCommands"]


class RedisCommands:
    """The bus's commands over one client, each bounded by ``timeout`` seconds."""

    def __init__(self, client: Redis, timeout: float) -> None:
        self.client = client
        self._timeout = timeout

    async def publish(self, channel: str, data: bytes) -> int:
        """PUBLISH; returns the number of receivers (0 = nobody listening)."""
        try:
            async with asyncio.timeout(self._timeout):
                return int(await self.client.publish(channel, data))
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
        if not entries:
            return []
        pipe = self.client.pipeline(transaction=False)
        for key, fields in entries:
            encoded: dict[Any, Any] = dict(fields)  # redis-py's field types are invariant
            pipe.xadd(key, encoded, maxlen=maxlen, approximate=True)
        try:
            async with asyncio.timeout(self._timeout):
                results = await pipe.execute(raise_on_error=False)
        except TimeoutError as exc:
            raise BusUnavailable("XADD pipeline: no answer in time") from exc
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"XADD pipeline: {exc}") from exc
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            error = BusRefused if isinstance(failed[0], ResponseError) else BusUnavailable
            raise error(f"XADD pipeline: {len(failed)} of {len(results)} failed: {failed[0]}")
        return [decode_text(r) for r in results]

    async def xread(
        self, streams: Mapping[str, str], *, block_ms: int, count: int
    ) -> list[tuple[str, str, dict[str, str]]]:
        """XREAD BLOCK: entries after the given ids, oldest first, as (stream, id, fields)."""
        try:
            async with asyncio.timeout(block_ms / 1000 + self._timeout):
                # redis-py's stream types are looser than its hints.
                wanted: dict[Any, Any] = dict(streams)
                reply: Any = await self.client.xread(wanted, count=count, block=block_ms)
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
                    (
                        decode_text(key),
                        decode_text(entry_id),
                        {decode_text(k): decode_text(v) for k, v in fields.items()},
                    )
                )
        return entries

    async def channel_subscribers(self, channel: str) -> int:
        """PUBSUB NUMSUB: subscribers of exactly ``channel`` (pattern subscribers excluded)."""
        try:
            async with asyncio.timeout(self._timeout):
                counts: Any = await self.client.pubsub_numsub(channel)
        except TimeoutError as exc:
            raise BusUnavailable("PUBSUB NUMSUB: no answer in time") from exc
        except ResponseError as exc:
            raise BusRefused(f"PUBSUB NUMSUB: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"PUBSUB NUMSUB: {exc}") from exc
        return int(counts[0][1]) if counts else 0

    async def stream_tail_id(self, key: str) -> str:
        """The id of the stream's newest entry, or ``0-0`` when it is empty or missing."""
        try:
            async with asyncio.timeout(self._timeout):
                newest: Any = await self.client.xrevrange(key, count=1)
        except TimeoutError as exc:
            raise BusUnavailable(f"XREVRANGE {key}: no answer in time") from exc
        except ResponseError as exc:
            raise BusRefused(f"XREVRANGE {key}: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"XREVRANGE {key}: {exc}") from exc
        return decode_text(newest[0][0]) if newest else "0-0"
