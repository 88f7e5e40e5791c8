"""RedisBus against private redis-servers: pub/sub delivery and confirmation, the
XADD pipeline, closing; both buses against the Bus protocol.

Reconnecting and authentication are in test_bus_connection, the MemoryBus fake in
test_memory_bus."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from bus_support import WAIT, C, Inbox, connected
from redis_fixtures import unique_name

import procmond.bus.memory as memory_bus
import procmond.bus.redis as bus_module
import procmond.bus.redis_commands as bus_commands
import procmond.bus.redis_pubsub as bus_pubsub
import procmond.bus.types as bus_types
from procmond.bus.memory import MemoryBroker, MemoryBus
from procmond.bus.redis import (
    Bus,
    BusClosed,
    BusRefused,
    ConnectionStatus,
    RedisBus,
)
from procmond.embedded import RedisServer

# -- RedisBus against a real server --------------------------------------------


@pytest.mark.redis
async def test_publish_subscribe_round_trip(redis_server: RedisServer) -> None:
    """A message published on a channel reaches the subscriber's handler with its bytes intact."""
    channel, inbox = unique_name(), Inbox()
    async with connected(redis_server.url) as bus:
        await bus.subscribe(channel, inbox.on_message)
        assert await bus.publish(channel, b"\x00hello\xff") == 1
        assert await inbox.get() == (channel, b"\x00hello\xff")


@pytest.mark.redis
async def test_subscribe_returns_after_the_server_confirmed(redis_server: RedisServer) -> None:
    """A publish from another connection right after subscribe() returns is already delivered."""
    channel, inbox = unique_name(), Inbox()
    async with connected(redis_server.url) as sub, connected(redis_server.url) as pub:
        for n in range(20):
            name = f"{channel}.{n}"
            await sub.subscribe(name, inbox.on_message)
            assert await pub.publish(name, b"x") == 1
        assert len({(await inbox.get())[0] for _ in range(20)}) == 20


class _StatusAtDelivery:
    """Records the bus status each message is delivered under."""

    def __init__(self, bus: RedisBus) -> None:
        self.bus = bus
        self.seen: list[tuple[ConnectionStatus, int]] = []
        self.first = asyncio.Event()

    def on_message(self, _channel: str, data: bytes) -> None:
        self.seen.append((self.bus.status, int(data)))
        self.first.set()


@pytest.mark.redis
async def test_messages_arriving_during_the_handshake_wait_for_connected(
    redis_server: RedisServer,
) -> None:
    """A handler never runs while the bus still says it is not connected.

    A thread floods the channel while the bus connects, so messages arrive
    between the subscribe confirmation and the handshake's PONG; they are held
    and handed over, in publish order, once ``Connected`` is reported.
    """
    channel = unique_name()
    stop = threading.Event()
    flooding = threading.Event()

    def flood() -> None:
        client = redis.Redis.from_url(redis_server.url)
        try:
            n = 0
            while not stop.is_set():
                client.publish(channel, str(n).encode())
                n += 1
                flooding.set()
        finally:
            client.close()

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        assert await asyncio.to_thread(flooding.wait, WAIT)
        for _ in range(5):
            bus = RedisBus(redis_server.url)
            recorder = _StatusAtDelivery(bus)
            await bus.subscribe(channel, recorder.on_message)
            await bus.start()
            try:
                async with asyncio.timeout(WAIT):
                    await recorder.first.wait()
            finally:
                await bus.close()
            assert {status for status, _ in recorder.seen} == {C.CONNECTED}
            numbers = [n for _, n in recorder.seen]
            assert numbers == sorted(numbers)
    finally:
        stop.set()
        await asyncio.to_thread(flooder.join, WAIT)


@pytest.mark.redis
async def test_publish_counts_receivers(redis_server: RedisServer) -> None:
    """PUBLISH returns how many subscriptions got the message: channels and patterns, 0 for none."""
    channel, inbox = unique_name("count"), Inbox()
    async with connected(redis_server.url) as a, connected(redis_server.url) as b:
        assert await a.publish(channel, b"nobody") == 0
        await a.subscribe(channel, inbox.on_message)
        await b.subscribe(channel, inbox.on_message)
        await b.psubscribe("count.*", inbox.on_pmessage)
        assert await a.publish(channel, b"x") == 3
        received = {await inbox.get() for _ in range(3)}
        assert received == {(channel, b"x"), ("count.*", channel, b"x")}


@pytest.mark.redis
async def test_unsubscribed_handler_is_not_called(redis_server: RedisServer) -> None:
    """After unsubscribe() returns, messages on that channel no longer reach the handler."""
    gone, kept, inbox = unique_name(), unique_name(), Inbox()
    async with connected(redis_server.url) as bus:
        await bus.subscribe(gone, inbox.on_message)
        await bus.subscribe(kept, inbox.on_message)
        await bus.unsubscribe(gone)
        await bus.publish(gone, b"late")
        await bus.publish(kept, b"marker")
        # One connection delivers in order: had "late" arrived, it came first.
        assert await inbox.get() == (kept, b"marker")
        assert inbox.items == [(kept, b"marker")]


@pytest.mark.redis
async def test_large_message_is_delivered(redis_server: RedisServer) -> None:
    """Messages over the protocol's 1 MiB are still delivered (the RPC layer refuses them)."""
    channel, inbox = unique_name(), Inbox()
    payload = b"x" * (2 * 1024 * 1024)
    async with connected(redis_server.url) as bus:
        await bus.subscribe(channel, inbox.on_message)
        await bus.publish(channel, payload)
        assert await inbox.get() == (channel, payload)


@pytest.mark.redis
async def test_failing_handler_does_not_stop_the_reader(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises is logged; later messages are still delivered."""
    channel, inbox = unique_name(), Inbox()

    def explode(_channel: str, _data: bytes) -> None:
        raise RuntimeError("boom")

    async with connected(redis_server.url) as bus:
        await bus.subscribe(channel, explode)
        await bus.subscribe(channel + ".ok", inbox.on_message)
        with caplog.at_level(logging.ERROR, logger="procmond.bus"):
            await bus.publish(channel, b"1")
            await bus.publish(channel + ".ok", b"2")
            assert await inbox.get() == (channel + ".ok", b"2")
        assert "handler" in caplog.text
        assert bus.status is C.CONNECTED


@pytest.mark.redis
async def test_xadd_many_returns_ids_in_order(redis_server: RedisServer) -> None:
    """One pipeline adds every entry; the ids come back in order and XRANGE shows the fields."""
    a, b = unique_name("stream"), unique_name("stream")
    entries: list[tuple[str, dict[str, str | bytes]]] = [
        (a, {"seq": "1", "event": b"{}"}),
        (b, {"seq": "2", "event": "{}"}),
        (a, {"seq": "3", "event": "{}"}),
    ]
    async with connected(redis_server.url) as bus:
        ids = await bus.xadd_many(entries, maxlen=None)
        assert await bus.xadd_many([], maxlen=None) == []
    assert len(ids) == 3
    assert all(isinstance(i, str) for i in ids)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        in_a: Any = await client.xrange(a)  # redis-py types XRANGE as Optional
        in_b: Any = await client.xrange(b)
        assert [(i, f["seq"]) for i, f in in_a] == [(ids[0], "1"), (ids[2], "3")]
        assert [i for i, _ in in_b] == [ids[1]]
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_xadd_many_trims_approximately_to_maxlen(redis_server: RedisServer) -> None:
    """MAXLEN ~ keeps at least maxlen entries and trims whole nodes beyond it."""
    key = unique_name("stream")
    async with connected(redis_server.url) as bus:
        await bus.xadd_many([(key, {"n": str(n)}) for n in range(1000)], maxlen=100)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert 100 <= await client.xlen(key) <= 200
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_xadd_to_a_key_of_another_type_is_refused(redis_server: RedisServer) -> None:
    """A server error reply (WRONGTYPE) raises BusRefused, not BusUnavailable."""
    key = unique_name("notastream")
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.set(key, "x")
    finally:
        await client.aclose()
    async with connected(redis_server.url) as bus:
        with pytest.raises(BusRefused, match="WRONGTYPE"):
            await bus.xadd_many([(key, {"f": "v"})], maxlen=None)


@pytest.mark.redis
async def test_close_is_idempotent_and_later_use_fails(redis_server: RedisServer) -> None:
    """close() twice is fine; using the bus afterwards raises BusClosed (the caller's fault)."""
    async with connected(redis_server.url) as bus:
        pass
    await bus.close()
    assert bus.status is C.DISCONNECTED
    with pytest.raises(BusClosed):
        await bus.publish("x", b"x")
    with pytest.raises(BusClosed):
        await bus.subscribe("x", lambda _c, _d: None)


def test_liveness_interval_must_be_shorter_than_timeout() -> None:
    """A ping interval as long as the timeout could never prove liveness."""
    with pytest.raises(ValueError, match="liveness_interval"):
        RedisBus("unix:///nonexistent", liveness_interval=3.0, liveness_timeout=3.0)


def test_both_buses_satisfy_the_protocol() -> None:
    """RedisBus and MemoryBus are usable wherever a Bus is expected (checked by mypy too)."""
    factories: list[Callable[[], Bus]] = [
        lambda: RedisBus("unix:///nonexistent"),
        lambda: MemoryBus(MemoryBroker()),
    ]
    for factory in factories:
        assert factory().status is C.DISCONNECTED


@pytest.mark.parametrize("module", [bus_module, bus_commands, bus_pubsub, bus_types, memory_bus])
def test_all_is_complete(module: ModuleType) -> None:
    """Every public name defined in the bus modules is exported in their __all__."""
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
    }
    assert public <= set(module.__all__)
