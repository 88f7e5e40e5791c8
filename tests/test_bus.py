"""The bus: RedisBus against private redis-servers, and the MemoryBus fake."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis_fixtures import running_redis, unique_name

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
    BusUnavailable,
    ConnectionStatus,
    RedisBus,
)
from procmond.embedded import RedisServer

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
async def test_status_sequence_across_server_restart(fresh_redis: RedisServer) -> None:
    """Stop + restart: Connected, Disconnected, Reconnecting, Connected; subscriptions work."""
    log, inbox = StatusLog(), Inbox()
    bus = RedisBus(fresh_redis.url)
    bus.add_status_listener(log)
    await bus.start()
    try:
        await log.reached(C.CONNECTED)
        await bus.subscribe("ch", inbox.on_message)
        await bus.psubscribe("p.*", inbox.on_pmessage)
        log.reset()
        fresh_redis.stop()
        await log.reached(C.RECONNECTING)
        fresh_redis.start()
        await log.reached(C.CONNECTED)
        assert log.seen == [C.CONNECTED, C.DISCONNECTED, C.RECONNECTING, C.CONNECTED]
        async with connected(fresh_redis.url) as other:
            assert await other.publish("ch", b"again") == 1
            assert await other.publish("p.x", b"pat") == 1
        assert {await inbox.get(), await inbox.get()} == {("ch", b"again"), ("p.*", "p.x", b"pat")}
    finally:
        await bus.close()
    assert log.seen[-1] is C.DISCONNECTED


@pytest.mark.redis
async def test_subscription_made_while_down_is_active_when_connected(
    fresh_redis: RedisServer,
) -> None:
    """start() returns at once with Redis down; a subscribe() made meanwhile works later."""
    fresh_redis.stop()
    log, inbox = StatusLog(), Inbox()
    bus = RedisBus(fresh_redis.url)
    bus.add_status_listener(log)
    async with asyncio.timeout(1):
        await bus.start()
    try:
        assert bus.status is not C.CONNECTED
        await bus.subscribe("early", inbox.on_message)
        await log.reached(C.RECONNECTING)
        with pytest.raises(BusUnavailable):
            await bus.publish("early", b"x")
        fresh_redis.start()
        assert await bus.wait_connected(WAIT)
        assert await bus.publish("early", b"x") == 1
        assert await inbox.get() == ("early", b"x")
        assert log.seen == [C.RECONNECTING, C.CONNECTED]
    finally:
        await bus.close()


@pytest.mark.redis
async def test_frozen_server_is_noticed(fresh_redis: RedisServer) -> None:
    """A SIGSTOPped server is Disconnected within liveness_timeout + 1 s; back after SIGCONT."""
    log = StatusLog()
    async with connected(fresh_redis.url, liveness_interval=0.2, liveness_timeout=1.0) as bus:
        bus.add_status_listener(log)
        fresh_redis.pause()
        try:
            await log.reached(C.DISCONNECTED, timeout=1.0 + 1.0)
        finally:
            fresh_redis.resume()
        await log.reached(C.CONNECTED)
        assert bus.status is C.CONNECTED


@pytest.mark.redis
async def test_publish_and_xadd_while_down_raise_unavailable(fresh_redis: RedisServer) -> None:
    """With the server gone, publish and xadd_many raise BusUnavailable."""
    log = StatusLog()
    async with connected(fresh_redis.url) as bus:
        bus.add_status_listener(log)
        fresh_redis.stop()
        await log.reached(C.DISCONNECTED)
        with pytest.raises(BusUnavailable):
            await bus.publish("ch", b"x")
        with pytest.raises(BusUnavailable):
            await bus.xadd_many([("s", {"f": "v"})], maxlen=10)


@pytest.mark.redis
async def test_tcp_url() -> None:
    """redis://127.0.0.1:port works as well as unix://."""
    from procmond.embedded import free_port

    with running_redis(port=free_port()) as server:
        assert server.url.startswith("redis://127.0.0.1:")
        inbox = Inbox()
        async with connected(server.url) as bus:
            await bus.subscribe("tcp", inbox.on_message)
            assert await bus.publish("tcp", b"x") == 1
            assert await inbox.get() == ("tcp", b"x")


@pytest.mark.redis
async def test_acl_user_and_password_in_the_url(fresh_redis: RedisServer) -> None:
    """An ACL user:password in a unix:// URL authenticates; a wrong password never connects."""
    admin = aioredis.Redis.from_url(fresh_redis.url)
    try:
        await admin.acl_setuser(
            "collector",
            enabled=True,
            passwords=["+s3cret"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
        await admin.acl_setuser("default", enabled=False)
    finally:
        await admin.aclose()
    path = fresh_redis.url.removeprefix("unix://")
    inbox = Inbox()
    async with connected(f"unix://collector:s3cret@{path}") as bus:
        await bus.subscribe("acl", inbox.on_message)
        assert await bus.publish("acl", b"x") == 1
        assert await inbox.get() == ("acl", b"x")
    wrong = RedisBus(f"unix://collector:wrong@{path}")
    await wrong.start()
    try:
        assert not await wrong.wait_connected(0.5)
    finally:
        await wrong.close()


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


# -- MemoryBus -------------------------------------------------------------------


async def _memory_pair() -> tuple[MemoryBroker, MemoryBus, MemoryBus]:
    broker = MemoryBroker()
    a, b = MemoryBus(broker), MemoryBus(broker)
    await a.start()
    await b.start()
    return broker, a, b


async def _drain() -> None:
    """Let call_soon deliveries run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_memory_round_trip_in_order_with_counts() -> None:
    """Fan-out to channel and pattern subscribers, in publish order, counted like PUBLISH."""
    broker, a, b = await _memory_pair()
    inbox = Inbox()
    await a.subscribe("control.x", inbox.on_message)
    await b.psubscribe("control.*", inbox.on_pmessage)
    assert a.status is C.CONNECTED
    assert await b.publish("control.x", b"1") == 2
    assert await b.publish("control.x", b"2") == 2
    assert await b.publish("other", b"3") == 0
    assert inbox.items == []  # delivered via call_soon, not inside publish
    await _drain()
    assert inbox.items == [
        ("control.x", b"1"),
        ("control.*", "control.x", b"1"),
        ("control.x", b"2"),
        ("control.*", "control.x", b"2"),
    ]
    assert broker.published == [("control.x", b"1"), ("control.x", b"2"), ("other", b"3")]


async def test_memory_broker_down_loses_messages_and_restores_subscriptions() -> None:
    """Broker down: Disconnected, Reconnecting, publish fails; back up: Connected, subscribed."""
    broker, a, b = await _memory_pair()
    log, inbox = StatusLog(), Inbox()
    a.add_status_listener(log)
    await a.subscribe("ch", inbox.on_message)
    await b.publish("ch", b"in flight")
    broker.set_down(True)
    await log.reached(C.RECONNECTING)
    with pytest.raises(BusUnavailable):
        await b.publish("ch", b"lost")
    with pytest.raises(BusUnavailable):
        await a.xadd_many([("s", {"f": "v"})], maxlen=None)
    broker.set_down(False)
    assert log.seen == [C.DISCONNECTED, C.RECONNECTING, C.CONNECTED]
    assert await b.publish("ch", b"after") == 1
    await _drain()
    assert inbox.items == [("ch", b"after")]


async def test_memory_per_bus_fault_leaves_the_others_up() -> None:
    """bus.set_down(True) cuts that bus alone: others still talk, it receives nothing."""
    _broker, a, b = await _memory_pair()
    inbox = Inbox()
    await a.subscribe("ch", inbox.on_message)
    a.set_down(True)
    assert a.status is C.DISCONNECTED
    assert b.status is C.CONNECTED
    assert await b.publish("ch", b"x") == 0
    a.set_down(False)
    assert await b.publish("ch", b"y") == 1
    await _drain()
    assert inbox.items == [("ch", b"y")]


async def test_memory_start_while_down_then_up() -> None:
    """Started on a down broker: Disconnected, then Reconnecting, then Connected once it is up."""
    broker = MemoryBroker()
    broker.set_down(True)
    bus, log = MemoryBus(broker), StatusLog()
    bus.add_status_listener(log)
    await bus.start()
    assert not await bus.wait_connected(0.01)
    await log.reached(C.RECONNECTING)
    broker.set_down(False)
    assert await bus.wait_connected(0.01)
    assert log.seen == [C.RECONNECTING, C.CONNECTED]


async def test_memory_streams_ids_maxlen_and_injected_failures() -> None:
    """Stream ids are "n-0" per stream; maxlen trims the oldest; fail_next_xadd fails one call."""
    broker, a, _b = await _memory_pair()
    ids = await a.xadd_many(
        [("s", {"n": str(n)}) for n in range(5)] + [("t", {"n": "x"})], maxlen=3
    )
    assert ids == ["1-0", "2-0", "3-0", "4-0", "5-0", "1-0"]
    assert broker.stream("s") == [("3-0", {"n": "2"}), ("4-0", {"n": "3"}), ("5-0", {"n": "4"})]
    assert broker.stream("missing") == []
    broker.fail_next_xadd()
    with pytest.raises(BusUnavailable):
        await a.xadd_many([("s", {"n": "5"})], maxlen=None)
    assert await a.xadd_many([("s", {"n": "5"})], maxlen=None) == ["6-0"]
    assert a.status is C.CONNECTED


async def test_memory_unsubscribe_drops_messages_in_flight() -> None:
    """A message already scheduled is not delivered after unsubscribe()."""
    _broker, a, b = await _memory_pair()
    inbox = Inbox()
    await a.subscribe("ch", inbox.on_message)
    assert await b.publish("ch", b"x") == 1
    await a.unsubscribe("ch")
    await _drain()
    assert inbox.items == []


async def test_memory_failing_handler_and_listener_are_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Exceptions from handlers and status listeners are logged, not raised into the bus."""
    broker, a, b = await _memory_pair()

    def explode(*_args: object) -> None:
        raise RuntimeError("boom")

    a.add_status_listener(explode)
    await a.subscribe("ch", explode)
    with caplog.at_level(logging.ERROR, logger="procmond.bus"):
        await b.publish("ch", b"x")
        await _drain()
        broker.set_down(True)
    assert "handler" in caplog.text
    assert "listener" in caplog.text
    assert a.status is C.DISCONNECTED


async def test_memory_close_is_idempotent() -> None:
    """close() twice is fine; the closed bus refuses use with BusClosed."""
    _broker, a, _b = await _memory_pair()
    await a.close()
    await a.close()
    assert a.status is C.DISCONNECTED
    with pytest.raises(BusClosed):
        await a.publish("ch", b"x")


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
